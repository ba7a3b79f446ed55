//! Checks on a decoded spec that go beyond its shape: names, references between
//! steps, params and secrets, expressions, globs, cron schedules.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::decode::SourceMap;
use crate::model::diagnostic::{Collector, Diagnostic, Severity, Span, did_you_mean};
use crate::model::expr::{self, ExprError, Reference};
use crate::model::limits::Limits;
use crate::model::pipeline::{
    EVENTS, Filter, MAX_MATRIX_CELLS, MAX_RETRIES, PipelineSpec, Step, Trigger, When,
};
use crate::model::typecheck;

/// Where a step sits, for deciding which steps it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// In stage `n`.
    Stage(usize),
    /// In `finally`.
    Finally,
}

/// What a string is used as, for the rules on what it may reference.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    /// The step or stage doing the reading, for messages.
    who: &'a str,
    /// The reading step's name, to catch a step reading itself.
    step: Option<&'a str>,
    /// Where it runs; `None` for pipeline-level values, which may read no step.
    at: Option<Position>,
    /// Conditions may not read secrets (a branch on a secret leaks it).
    condition: bool,
}

struct Checker<'a, 'c> {
    spec: &'a PipelineSpec,
    map: &'a SourceMap,
    diags: &'c mut Collector,
    steps: BTreeMap<&'a str, Position>,
    /// Matrix cell name → its step's name (cells can be named in `needs` and
    /// read as `steps['build (linux, 1)']`).
    cells: BTreeMap<String, &'a str>,
    /// Step → every step it waits for, directly or not (`needs`, or the
    /// previous stage), for the rules on which results a step may read.
    ancestors: BTreeMap<&'a str, BTreeSet<&'a str>>,
    /// Declared params and secrets, for lookups per reference.
    params: BTreeSet<&'a str>,
    secrets: BTreeSet<&'a str>,
}

fn valid_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl<'a> Checker<'a, '_> {
    /// Whether the diagnostic about to be made is past the cap; then it is only
    /// counted, and the caller skips the work of writing it.
    fn skip(&mut self) -> bool {
        let full = self.diags.full();
        if full {
            self.diags.count(Severity::Error);
        }
        full
    }

    fn report(&mut self, code: &str, message: String, path: &str, hint: Option<String>) {
        let span = self.map.span(path);
        self.push(code, message, span, hint);
    }

    fn push(&mut self, code: &str, message: String, span: Option<Span>, hint: Option<String>) {
        if self.skip() {
            return;
        }
        let mut d = self.map.locate(Diagnostic::error(code, message), span);
        d.hint = hint;
        self.diags.push(d);
    }

    fn names(&mut self) {
        let mut stages: BTreeSet<&str> = BTreeSet::new();
        for (i, stage) in self.spec.stages.iter().enumerate() {
            let path = format!("stages[{i}]");
            if !stage.name.is_empty() && !stages.insert(&stage.name) {
                self.report(
                    "duplicate-name",
                    format!("stage `{}` is defined twice", stage.name),
                    &format!("{path}.name"),
                    Some("stage names must be unique".into()),
                );
            }
            if stage.steps.is_empty() {
                self.report(
                    "empty-stage",
                    format!("stage `{}` has no steps", stage.name),
                    &path,
                    Some("add a step or remove the stage".into()),
                );
            }
        }
        let mut seen: BTreeMap<&str, ()> = BTreeMap::new();
        let positioned = self.step_paths();
        for (step, path, pos) in positioned {
            if step.name.is_empty() {
                continue;
            }
            if !valid_name(&step.name) {
                self.report(
                    "invalid-name",
                    format!("`{}` is not a valid step name", step.name),
                    &format!("{path}.name"),
                    Some("use letters, digits, `_` and `-`, starting with a letter, so `steps.<name>` can refer to it".into()),
                );
            }
            if seen.insert(&step.name, ()).is_some() {
                self.report(
                    "duplicate-name",
                    format!("step `{}` is defined twice", step.name),
                    &format!("{path}.name"),
                    Some("step names must be unique across all stages and `finally`".into()),
                );
            } else {
                self.steps.insert(&step.name, pos);
            }
        }
        // Cells once every step is known, so a cell named like a step is caught.
        for (step, path, _) in self.step_paths() {
            let Some(matrix) = &step.matrix else { continue };
            if matrix.product() > MAX_MATRIX_CELLS * 4 {
                continue; // reported by `matrix`
            }
            for cell in matrix.cells() {
                let name = cell.name(&step.name, matrix);
                if self.steps.contains_key(name.as_str()) || self.cells.contains_key(&name) {
                    self.report(
                        "duplicate-name",
                        format!("matrix cell `{name}` has the name of another step or cell"),
                        &format!("{path}.matrix"),
                        Some("rename the step, or change the values".into()),
                    );
                    continue;
                }
                self.cells.insert(name, &step.name);
            }
        }
        if self.spec.stages.is_empty() && self.map.span("stages").is_some() {
            self.report(
                "no-stages",
                "the pipeline has no stages".into(),
                "stages",
                Some("add at least one stage".into()),
            );
        }
        let mut params = BTreeSet::new();
        for (i, p) in self.spec.params.iter().enumerate() {
            if !params.insert(&p.name) {
                self.report(
                    "duplicate-name",
                    format!("param `{}` is declared twice", p.name),
                    &format!("params[{i}].name"),
                    None,
                );
            }
            if let Some(default) = &p.default
                && !p.kind.accepts(default)
            {
                self.report(
                    "param-type",
                    format!(
                        "the default of param `{}` is not a {}",
                        p.name,
                        p.kind.as_str()
                    ),
                    &format!("params[{i}].default"),
                    Some(format!(
                        "give a {} default or change `type`{}",
                        p.kind.as_str(),
                        if default.is_string() {
                            " (quoted values are strings)"
                        } else {
                            ""
                        }
                    )),
                );
            }
        }
    }

    /// The step a `needs` entry or reference names: a step, or a matrix cell.
    fn named_step(&self, name: &str) -> Option<(&'a str, Position)> {
        if let Some((k, pos)) = self.steps.get_key_value(name) {
            return Some((k, *pos));
        }
        let step = *self.cells.get(name)?;
        Some((step, *self.steps.get(step)?))
    }

    /// Checks every `needs` (names, order, cycles) and works out each step's
    /// ancestors.
    fn needs(&mut self) {
        let spec = self.spec;
        // Direct dependencies, by step name.
        let mut deps: BTreeMap<&'a str, Vec<&'a str>> = BTreeMap::new();
        let mut previous: Vec<&'a str> = Vec::new();
        for (i, stage) in spec.stages.iter().enumerate() {
            for (j, step) in stage.steps.iter().enumerate() {
                let path = format!("stages[{i}].steps[{j}]");
                if deps.contains_key(step.name.as_str()) {
                    continue; // a duplicate name, reported by `names`
                }
                if step.needs.is_empty() {
                    let implicit = previous.iter().copied().filter(|p| *p != step.name);
                    deps.insert(&step.name, implicit.collect());
                    continue;
                }
                let mut direct = Vec::new();
                for (k, need) in step.needs.iter().enumerate() {
                    let at = format!("{path}.needs[{k}]");
                    match self.named_step(need) {
                        None => {
                            let names = self
                                .steps
                                .keys()
                                .copied()
                                .chain(self.cells.keys().map(String::as_str));
                            let hint = match did_you_mean(need, names) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None => "name a step of this stage or of an earlier one".into(),
                            };
                            self.report(
                                "unknown-need",
                                format!("step `{}` needs `{need}`, which does not exist", step.name),
                                &at,
                                Some(hint),
                            );
                        }
                        Some((target, _)) if target == step.name => self.report(
                            "need-cycle",
                            format!("step `{}` needs itself", step.name),
                            &at,
                            Some("a step cannot wait for itself; remove the entry".into()),
                        ),
                        Some((_, Position::Finally)) => self.report(
                            "need-order",
                            format!("step `{}` needs `{need}`, a `finally` step, which runs after every stage", step.name),
                            &at,
                            Some("`finally` steps run last; a stage step cannot wait for one".into()),
                        ),
                        Some((_, Position::Stage(b))) if b > i => self.report(
                            "need-order",
                            format!("step `{}` needs `{need}`, which runs in a later stage", step.name),
                            &at,
                            Some(format!("move `{need}` to this stage or an earlier one")),
                        ),
                        Some((target, _)) => {
                            if !direct.contains(&target) {
                                direct.push(target);
                            }
                        }
                    }
                }
                deps.insert(&step.name, direct);
            }
            if !stage.steps.is_empty() {
                previous = stage.steps.iter().map(|s| s.name.as_str()).collect();
            }
        }
        for (j, step) in spec.finally.iter().enumerate() {
            if !step.needs.is_empty() {
                self.report(
                    "needs-in-finally",
                    format!("`finally` step `{}` has `needs`", step.name),
                    &format!("finally[{j}].needs"),
                    Some("`finally` steps run together after every stage; remove `needs`".into()),
                );
            }
        }
        // Cycles (only within a stage: needs across stages point backwards).
        let mut reported: BTreeSet<&str> = BTreeSet::new();
        for (i, stage) in spec.stages.iter().enumerate() {
            for (j, step) in stage.steps.iter().enumerate() {
                if reported.contains(step.name.as_str()) {
                    continue;
                }
                if let Some(cycle) = find_cycle(&step.name, &deps) {
                    reported.extend(cycle.iter().copied());
                    let mut shown: Vec<String> = cycle.iter().map(|n| format!("`{n}`")).collect();
                    shown.push(format!("`{}`", cycle[0]));
                    self.report(
                        "need-cycle",
                        format!(
                            "steps wait for each other in a cycle: {}",
                            shown.join(" needs ")
                        ),
                        &format!("stages[{i}].steps[{j}].needs"),
                        Some("remove one of these `needs` so the steps can start".into()),
                    );
                }
            }
        }
        // Ancestors, memoised; a cycle (reported above) ends the walk.
        for name in deps.keys().copied().collect::<Vec<_>>() {
            let mut seen = BTreeSet::new();
            let mut stack = vec![name];
            while let Some(n) = stack.pop() {
                for d in deps.get(n).into_iter().flatten() {
                    if seen.insert(*d) {
                        stack.push(d);
                    }
                }
            }
            self.ancestors.insert(name, seen);
        }
    }

    fn matrix(&mut self, step: &Step, path: &str) {
        let Some(m) = &step.matrix else { return };
        let at = format!("{path}.matrix");
        if m.axes.is_empty() && m.include.is_empty() {
            self.report(
                "empty-matrix",
                format!("the matrix of step `{}` has no axes", step.name),
                &at,
                Some("add an axis such as `os: [linux, mac]`, or remove `matrix`".into()),
            );
            return;
        }
        for (k, entry) in m.exclude.iter().enumerate() {
            for key in entry.keys() {
                if !m.axes.contains_key(key) {
                    let hint = match did_you_mean(key, m.axes.keys().map(String::as_str)) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "an `exclude` entry names axes of the matrix".into(),
                    };
                    self.report(
                        "unknown-matrix-key",
                        format!("`matrix.exclude` names `{key}`, which is not an axis"),
                        &format!("{at}.exclude[{k}].{key}"),
                        Some(hint),
                    );
                }
            }
        }
        let product = m.product();
        let cells = if product > MAX_MATRIX_CELLS * 4 {
            product
        } else {
            m.cells().len()
        };
        if cells > MAX_MATRIX_CELLS {
            self.report(
                "matrix-too-large",
                format!(
                    "the matrix of step `{}` has {cells} cells, more than the limit of {MAX_MATRIX_CELLS}",
                    step.name
                ),
                &at,
                Some("split the step, or `exclude` combinations you do not need".into()),
            );
        } else if cells == 0 {
            self.report(
                "empty-matrix",
                format!(
                    "the matrix of step `{}` has no cells left after `exclude`",
                    step.name
                ),
                &at,
                Some("exclude fewer combinations".into()),
            );
        }
    }

    fn step_paths(&self) -> Vec<(&'a Step, String, Position)> {
        let mut out = Vec::new();
        for (i, stage) in self.spec.stages.iter().enumerate() {
            for (j, step) in stage.steps.iter().enumerate() {
                out.push((step, format!("stages[{i}].steps[{j}]"), Position::Stage(i)));
            }
        }
        for (j, step) in self.spec.finally.iter().enumerate() {
            out.push((step, format!("finally[{j}]"), Position::Finally));
        }
        out
    }

    /// What validation knows of a reference's type: a param's declared
    /// type; text for outputs, states, secrets, env and the run's facts; a
    /// matrix value may be anything.
    fn ref_type(&self, r: &Reference) -> typecheck::Ty {
        use crate::model::pipeline::ParamType;
        match r {
            Reference::Param(name) => match self.spec.params.iter().find(|p| p.name == *name) {
                Some(p) => match p.kind {
                    ParamType::String => typecheck::Ty::String,
                    ParamType::Number => typecheck::Ty::Number,
                    ParamType::Bool => typecheck::Ty::Bool,
                    ParamType::Array => typecheck::Ty::List,
                },
                None => typecheck::Ty::Any,
            },
            Reference::Matrix(_) => typecheck::Ty::Any,
            _ => typecheck::Ty::String,
        }
    }

    fn type_error(&mut self, path: &str, te: typecheck::TypeError, len: usize) {
        let span = self.map.span_in(path, te.range.unwrap_or(0..len));
        self.push(
            "type-mismatch",
            te.message,
            span,
            Some("the types are known before the run; fix the expression, or convert with `format` or `fromJSON`".into()),
        );
    }

    fn expr_error(&mut self, path: &str, e: &ExprError) {
        let span = self.map.span_in(path, e.range.clone());
        self.push("bad-expression", e.message.clone(), span, e.hint.clone());
    }

    fn reference(
        &mut self,
        r: &Reference,
        path: &str,
        range: std::ops::Range<usize>,
        reader: Reader<'_>,
    ) {
        // Positions and suggestions are worked out only for diagnostics kept.
        let span = |c: &Self| c.map.span_in(path, range.clone());
        match r {
            Reference::Param(name) => {
                if !self.params.contains(name.as_str()) {
                    if self.skip() {
                        return;
                    }
                    let hint = match did_you_mean(
                        name,
                        self.spec.params.iter().map(|p| p.name.as_str()),
                    ) {
                        Some(s) => format!("did you mean `params.{s}`?"),
                        None => format!("declare it under `params:` with `- name: {name}`"),
                    };
                    self.push(
                        "unknown-param",
                        format!("param `{name}` is not declared"),
                        span(self),
                        Some(hint),
                    );
                }
            }
            Reference::Secret(name) => {
                if reader.condition && reader.at.is_none() {
                    // The concurrency group: a name the API shows.
                    self.push(
                        "secret-in-condition",
                        format!("{} cannot read `secrets.{name}`", reader.who),
                        span(self),
                        Some("a group's name is shown in the API; use a param".into()),
                    );
                } else if reader.condition {
                    self.push(
                        "secret-in-condition",
                        format!("conditions cannot read `secrets.{name}`"),
                        span(self),
                        Some("branching on a secret would reveal it; use a param".into()),
                    );
                } else if !self.secrets.contains(name.as_str()) {
                    if self.skip() {
                        return;
                    }
                    let hint =
                        match did_you_mean(name, self.spec.secrets.iter().map(String::as_str)) {
                            Some(s) => format!("did you mean `secrets.{s}`?"),
                            None => format!("add `{name}` to the pipeline's `secrets:` list"),
                        };
                    self.push(
                        "undeclared-secret",
                        format!("secret `{name}` is not declared"),
                        span(self),
                        Some(hint),
                    );
                }
            }
            Reference::StepOutput { step, .. } | Reference::StepState(step) => {
                if self.named_step(step).is_none() && self.skip() {
                    return;
                }
                let span = span(self);
                self.step_reference(step, r, span, reader);
            }
            Reference::Event | Reference::Branch | Reference::Commit | Reference::Trigger(_) => {}
            Reference::Env(name) => {
                let step = reader
                    .step
                    .and_then(|n| self.spec.all_steps().find(|s| s.name == n));
                let declared = self.spec.env.contains_key(name)
                    || step.is_some_and(|s| s.env.contains_key(name));
                if !declared {
                    let names = self
                        .spec
                        .env
                        .keys()
                        .chain(step.into_iter().flat_map(|s| s.env.keys()))
                        .map(String::as_str);
                    let hint = match did_you_mean(name, names) {
                        Some(s) => format!("did you mean `env.{s}`?"),
                        None => format!("set `{name}` under the pipeline's or the step's `env:`"),
                    };
                    self.push(
                        "unknown-env",
                        format!("`env.{name}` is not set"),
                        span(self),
                        Some(hint),
                    );
                }
            }
            Reference::Matrix(name) => {
                let matrix = reader
                    .step
                    .and_then(|n| self.spec.all_steps().find(|s| s.name == n))
                    .and_then(|s| s.matrix.as_ref());
                match matrix {
                    None => self.push(
                        "unknown-matrix-key",
                        format!("{} reads `matrix.{name}` but has no `matrix`", reader.who),
                        span(self),
                        Some("`matrix.*` is read by the cells of a step with a `matrix`".into()),
                    ),
                    Some(m) => {
                        let known = m.axes.contains_key(name)
                            || m.include.iter().any(|e| e.contains_key(name));
                        // A key only some cells have (from `include`) is
                        // allowed: cells without it fail at run time.
                        if !known {
                            let keys = m
                                .axes
                                .keys()
                                .chain(m.include.iter().flat_map(|e| e.keys()))
                                .map(String::as_str);
                            let hint = match did_you_mean(name, keys) {
                                Some(s) => format!("did you mean `matrix.{s}`?"),
                                None => "name an axis of the step's matrix".into(),
                            };
                            self.push(
                                "unknown-matrix-key",
                                format!("`matrix.{name}` is not an axis of the step's matrix"),
                                span(self),
                                Some(hint),
                            );
                        }
                    }
                }
            }
            Reference::Pipeline => {}
        }
    }

    fn step_reference(
        &mut self,
        step: &str,
        r: &Reference,
        span: Option<Span>,
        reader: Reader<'_>,
    ) {
        let Some((step, target)) = self.named_step(step) else {
            let hint = match did_you_mean(step, self.steps.keys().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "steps can read the outputs of steps in earlier stages".into(),
            };
            self.push(
                "unknown-step",
                format!("`{r}` refers to step `{step}`, which does not exist"),
                span,
                Some(hint),
            );
            return;
        };
        let who = reader.who;
        let (message, hint) = match (reader.at, target) {
            (None, _) => (
                format!("`{r}` cannot be read here"),
                "pipeline-level values are set before any step runs".to_owned(),
            ),
            (Some(_), _) if reader.step == Some(step) => (
                format!("{who} reads its own result `{r}`"),
                "a step cannot depend on itself".to_owned(),
            ),
            // A step may read what it waits for, `needs` or earlier stages.
            (Some(Position::Stage(_)), Position::Stage(_))
                if reader
                    .step
                    .is_some_and(|s| self.ancestors.get(s).is_some_and(|a| a.contains(step))) =>
            {
                return;
            }
            (Some(Position::Stage(a)), Position::Stage(b)) if b > a => (
                format!("{who} reads `{r}` but `{step}` runs in a later stage"),
                format!("move `{step}` to an earlier stage, or this step to a later one"),
            ),
            (Some(Position::Stage(a)), Position::Stage(b)) if b == a => (
                format!("{who} reads `{r}` but `{step}` runs in parallel in the same stage"),
                format!("add `{step}` to its `needs`, or move `{step}` to an earlier stage"),
            ),
            (Some(Position::Stage(_)), Position::Stage(_)) if reader.step.is_some() => (
                format!("{who} reads `{r}` but does not wait for `{step}`"),
                format!("add `{step}` to its `needs`"),
            ),
            (Some(Position::Stage(_)), Position::Finally) => (
                format!(
                    "{who} reads `{r}` but `{step}` is a `finally` step, which runs after every stage"
                ),
                format!("move the reading step to `finally`, or `{step}` into a stage"),
            ),
            (Some(Position::Finally), Position::Finally) => (
                format!("{who} reads `{r}` but `{step}` runs in parallel in `finally`"),
                "`finally` steps can read the results of the stages".to_owned(),
            ),
            // An earlier stage, or a stage read from `finally`: fine.
            _ => return,
        };
        self.push("step-order", message, span, Some(hint));
    }

    fn template(&mut self, text: &str, path: &str, reader: Reader<'_>) {
        match expr::parse_template(text) {
            Err(e) => self.expr_error(path, &e),
            Ok(t) => {
                for part in &t.parts {
                    if let expr::TemplatePart::Expr(e, offset) = part {
                        let lookup = |r: &Reference| self.ref_type(r);
                        let mut errors = Vec::new();
                        typecheck::check(e, &lookup, &mut errors);
                        for mut te in errors {
                            te.range = te.range.map(|r| r.start + offset..r.end + offset);
                            self.type_error(path, te, text.len());
                        }
                    }
                }
                for (func, range) in t.status_calls() {
                    let span = self.map.span_in(path, range);
                    self.push(
                        "status-outside-condition",
                        format!("`{}()` can be used only in an `if` condition", func.name()),
                        span,
                        Some("the status functions say whether a step runs; use `steps.<name>.state` to read a state".into()),
                    );
                }
                for (r, range) in t.references() {
                    self.reference(r, path, range, reader);
                }
            }
        }
    }

    fn json_templates(&mut self, value: &serde_json::Value, path: &str, reader: Reader<'_>) {
        match value {
            serde_json::Value::String(s) => self.template(s, path, reader),
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    self.json_templates(v, &format!("{path}[{i}]"), reader);
                }
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    self.json_templates(v, &format!("{path}.{k}"), reader);
                }
            }
            _ => {}
        }
    }

    fn filter(&mut self, filter: &Filter, path: &str, events: bool) {
        for (list, name) in [(&filter.include, "include"), (&filter.exclude, "exclude")] {
            for (i, pattern) in list.iter().enumerate() {
                let p = format!("{path}.{name}[{i}]");
                if let Err(e) = globset::Glob::new(pattern) {
                    self.report(
                        "bad-glob",
                        format!("`{pattern}` is not a valid glob: {}", e.kind()),
                        &p,
                        Some("globs use `*`, `**`, `?`, `[abc]` and `{a,b}`".into()),
                    );
                } else if events
                    && !pattern.contains(['*', '?', '[', '{'])
                    && !EVENTS.contains(&pattern.as_str())
                {
                    self.unknown_event(pattern, &p);
                }
            }
        }
    }

    fn unknown_event(&mut self, event: &str, path: &str) {
        let hint = match did_you_mean(event, EVENTS) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("events are: {}", EVENTS.join(", ")),
        };
        self.report(
            "unknown-event",
            format!("unknown event `{event}`"),
            path,
            Some(hint),
        );
    }

    fn when(&mut self, when: &When, path: &str, reader: Reader<'_>) {
        self.filter(&when.branch, &format!("{path}.branch"), false);
        self.filter(&when.event, &format!("{path}.event"), true);
        if let Some(text) = &when.if_expr {
            let p = format!("{path}.if");
            match expr::parse(text) {
                Err(e) => self.expr_error(&p, &e),
                Ok(e) => {
                    let lookup = |r: &Reference| self.ref_type(r);
                    for te in typecheck::check_condition(&e, &lookup) {
                        self.type_error(&p, te, text.len());
                    }
                    for (r, range) in e.references() {
                        self.reference(
                            r,
                            &p,
                            range,
                            Reader {
                                condition: true,
                                ..reader
                            },
                        );
                    }
                }
            }
        }
    }

    fn step(&mut self, step: &Step, path: &str, pos: Position) {
        let who = format!("step `{}`", step.name);
        let reader = Reader {
            who: &who,
            step: Some(&step.name),
            at: Some(pos),
            condition: false,
        };
        for (k, v) in &step.with {
            self.json_templates(v, &format!("{path}.with.{k}"), reader);
        }
        for (k, v) in &step.env {
            self.template(v, &format!("{path}.env.{k}"), reader);
        }
        if let Some(a) = &step.approval {
            self.template(&a.message, &format!("{path}.approval.message"), reader);
        }
        if let Some(call) = &step.pipeline {
            for (k, v) in &call.params {
                self.json_templates(v, &format!("{path}.pipeline.params.{k}"), reader);
            }
        }
        if let Some(when) = &step.when {
            self.when(when, &format!("{path}.when"), reader);
        }
        if let Some(retry) = &step.retries
            && retry.count > MAX_RETRIES
        {
            self.report(
                "too-many-retries",
                format!(
                    "{} retries is more than the limit of {MAX_RETRIES}",
                    retry.count
                ),
                &format!("{path}.retries.count"),
                Some("use a backoff with fewer retries".into()),
            );
        }
        if let Some(cache) = &step.cache {
            self.template(&cache.key, &format!("{path}.cache.key"), reader);
            if cache.paths.is_empty() {
                self.report(
                    "empty-cache",
                    "`cache.paths` is empty".into(),
                    &format!("{path}.cache.paths"),
                    None,
                );
            }
            for (i, p) in cache.paths.iter().enumerate() {
                if p.starts_with('/') || p.split('/').any(|seg| seg == "..") {
                    self.report(
                        "cache-path",
                        format!("cache path `{p}` leaves the workspace"),
                        &format!("{path}.cache.paths[{i}]"),
                        Some(
                            "cache paths are relative to /workspace and cannot contain `..`".into(),
                        ),
                    );
                }
            }
        }
    }

    fn run(&mut self) {
        self.names();
        self.needs();
        let pipeline_reader = Reader {
            who: "the pipeline",
            step: None,
            at: None,
            condition: false,
        };
        let spec = self.spec;
        for (k, v) in &spec.env {
            self.template(v, &format!("env.{k}"), pipeline_reader);
        }
        if let Some(c) = &spec.concurrency {
            // Worked out at trigger time: no step has run, and a secret in a
            // group name would be shown in the API.
            let reader = Reader {
                who: "the concurrency group",
                condition: true,
                ..pipeline_reader
            };
            if c.group.trim().is_empty() {
                self.report(
                    "bad-concurrency-group",
                    "the concurrency group is empty".into(),
                    "concurrency.group",
                    Some("name the group, e.g. `${{ pipeline }}-${{ branch }}`".into()),
                );
            } else {
                self.template(&c.group, "concurrency.group", reader);
            }
        }
        let mut secrets = BTreeSet::new();
        for (i, s) in spec.secrets.iter().enumerate() {
            if !secrets.insert(s) {
                self.report(
                    "duplicate-name",
                    format!("secret `{s}` is declared twice"),
                    &format!("secrets[{i}]"),
                    None,
                );
            }
        }
        if let Some(source) = &spec.source {
            if let Err(why) = crate::model::pipeline::check_repository_url(&source.repository) {
                self.report(
                    "bad-source",
                    format!("`source.repository` {why}"),
                    "source.repository",
                    None,
                );
            }
            if let Some(branch) = &source.branch
                && let Err(why) = crate::model::pipeline::check_branch_name(branch)
            {
                self.report(
                    "bad-source",
                    format!("`source.branch` {why}"),
                    "source.branch",
                    None,
                );
            }
        }
        if let Some(source) = &spec.source
            && let Some(cred) = &source.credential
            && !spec.secrets.contains(cred)
        {
            self.report(
                "undeclared-secret",
                format!("credential secret `{cred}` is not declared"),
                "source.credential",
                Some(format!("add `{cred}` to the pipeline's `secrets:` list")),
            );
        }
        for (i, t) in spec.triggers.iter().enumerate() {
            let path = format!("triggers[{i}]");
            match t {
                Trigger::Manual => {}
                Trigger::Cron { schedule, .. } => {
                    if let Err(e) = crate::model::pipeline::parse_cron(schedule) {
                        self.report(
                            "bad-cron",
                            format!("`{schedule}` is not a cron schedule: {e}"),
                            &format!("{path}.schedule"),
                            Some("use five fields `minute hour day-of-month month day-of-week`, e.g. `0 3 * * 1-5`, or `@daily`".into()),
                        );
                    }
                }
                Trigger::ImagePush {
                    repository, tags, ..
                } => {
                    if repository.trim().is_empty() {
                        self.report(
                            "bad-image-push",
                            "`repository` is empty".into(),
                            &format!("{path}.repository"),
                            Some("name the repository as the registry does, e.g. `team/app`, or a glob such as `team/*`".into()),
                        );
                    } else if let Err(e) = globset::Glob::new(repository) {
                        self.report(
                            "bad-glob",
                            format!("`{repository}` is not a valid glob: {}", e.kind()),
                            &format!("{path}.repository"),
                            Some("globs use `*`, `**`, `?`, `[abc]` and `{a,b}`".into()),
                        );
                    }
                    self.filter(tags, &format!("{path}.tags"), false);
                }
                Trigger::Webhook {
                    events,
                    branch,
                    secret,
                } => {
                    for (j, e) in events.iter().enumerate() {
                        if !EVENTS.contains(&e.as_str()) {
                            self.unknown_event(e, &format!("{path}.events[{j}]"));
                        }
                    }
                    self.filter(branch, &format!("{path}.branch"), false);
                    if let Some(secret) = secret
                        && !spec.secrets.contains(secret)
                    {
                        self.report(
                            "undeclared-secret",
                            format!("webhook secret `{secret}` is not declared"),
                            &format!("{path}.secret"),
                            Some(format!("add `{secret}` to the pipeline's `secrets:` list")),
                        );
                    }
                }
            }
        }
        for (i, stage) in spec.stages.iter().enumerate() {
            if let Some(when) = &stage.when {
                let who = format!("stage `{}`", stage.name);
                // A stage condition is evaluated before its steps start, so it may
                // read earlier stages only: same rules as its first step.
                self.when(
                    when,
                    &format!("stages[{i}].when"),
                    Reader {
                        who: &who,
                        step: None,
                        at: Some(Position::Stage(i)),
                        condition: true,
                    },
                );
            }
        }
        for (step, path, pos) in self.step_paths() {
            self.step(step, &path, pos);
            self.matrix(step, &path);
        }
    }
}

/// A cycle of `needs` through `start`, in order, if there is one.
fn find_cycle<'a>(start: &'a str, deps: &BTreeMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
    // Depth-first from `start`, looking for a path back to it.
    let mut path: Vec<(&'a str, usize)> = vec![(start, 0)];
    let mut visited: BTreeSet<&'a str> = BTreeSet::new();
    while let Some((node, next)) = path.last_mut() {
        let children = deps.get(*node).map_or(&[][..], Vec::as_slice);
        if let Some(child) = children.get(*next) {
            *next += 1;
            if *child == start {
                return Some(path.iter().map(|(n, _)| *n).collect());
            }
            if visited.insert(child) {
                path.push((child, 0));
            }
        } else {
            path.pop();
        }
    }
    None
}

/// Checks a spec's names, references, expressions, globs and schedules.
/// `map` locates the diagnostics; use [`SourceMap::detached`] for a spec that did
/// not come from a file. At most [`Limits::max_diagnostics`] (by default) are
/// reported, then one note for the rest.
pub fn validate(spec: &PipelineSpec, map: &SourceMap) -> Vec<Diagnostic> {
    let mut diags = Collector::new(Limits::default().max_diagnostics);
    check(spec, map, &mut diags);
    diags.finish(&map.file)
}

/// [`validate`] into a collector shared with the decoder.
pub(crate) fn check(spec: &PipelineSpec, map: &SourceMap, diags: &mut Collector) {
    let mut c = Checker {
        spec,
        map,
        diags,
        steps: BTreeMap::new(),
        cells: BTreeMap::new(),
        ancestors: BTreeMap::new(),
        params: spec.params.iter().map(|p| p.name.as_str()).collect(),
        secrets: spec.secrets.iter().map(String::as_str).collect(),
    };
    c.run();
}

/// Checks that no step of pipeline `name` calls `name` itself (calls through
/// other pipelines are checked when it is applied, against the engine's).
pub(crate) fn check_calls(name: &str, spec: &PipelineSpec, map: &SourceMap, diags: &mut Collector) {
    let stages = spec.stages.iter().enumerate().flat_map(|(i, s)| {
        s.steps
            .iter()
            .enumerate()
            .map(move |(j, step)| (format!("stages[{i}].steps[{j}]"), step))
    });
    let finally = spec
        .finally
        .iter()
        .enumerate()
        .map(|(j, step)| (format!("finally[{j}]"), step));
    for (path, step) in stages.chain(finally) {
        if step.pipeline.as_ref().is_some_and(|c| c.name == name) {
            let mut d = map.locate(
                Diagnostic::error(
                    "pipeline-calls-itself",
                    format!(
                        "step `{}` calls pipeline `{name}`, the pipeline it is in",
                        step.name
                    ),
                ),
                map.span(&format!("{path}.pipeline.name"))
                    .or_else(|| map.span(&format!("{path}.pipeline"))),
            );
            d.hint =
                Some("a pipeline calling itself would never end; call another pipeline".into());
            diags.push(d);
        }
    }
}

/// Whether any diagnostic is an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(|d| d.severity == Severity::Error)
}
