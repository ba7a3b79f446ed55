//! The expression language of `when.if` and `${{ … }}` interpolation.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := cmp ("&&" cmp)*
//! cmp     := unary (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") unary)?
//! unary   := "!" unary | primary
//! primary := STRING | NUMBER | "true" | "false" | "[" (expr ("," expr)*)? "]"
//!          | reference | "(" expr ")" | FUNCTION "(" (expr ("," expr)*)? ")"
//! reference := "params." NAME | "secrets." NAME | "env." NAME | "matrix." NAME
//!            | step ".outputs." NAME | step ".state"
//!            | "event" | "branch" | "commit" | "pipeline"
//!            | "trigger.image" | "trigger.digest" | "trigger.tag"
//! step    := "steps." NAME | "steps[" STRING "]"
//! ```
//! Functions (GitHub Actions' names): `contains(haystack, needle)` (substring
//! or list member), `startsWith(s, prefix)`, `endsWith(s, suffix)`,
//! `format('{0}-{1}', a, b)` (`{{`/`}}` for braces), `join(list, sep = ',')`,
//! `toJSON(value)`, `fromJSON(text)`; the status functions `success()`,
//! `failure()`, `always()`, `cancelled()`, which read the run's
//! [`StatusFacts`] and so work only where the context has them (a step's or
//! stage's `if`); and `hashFiles(pattern, …)`, the SHA-256 of the workspace
//! files the globs select (see [`EvalContext::hash_files`]). Their names and
//! arities are checked when parsing. `<`, `<=`, `>`, `>=` compare two numbers
//! or two strings.
//! Strings are `'…'` or `"…"` with `\` escapes. Names may contain `-` (step names
//! often do); a step whose name has other characters (a matrix cell's, such as
//! `build (linux, 1)`) is written `steps['build (linux, 1)']`. The language is
//! total: the parser returns positioned errors, nesting is bounded, and
//! evaluation returns [`EvalError`] for a missing reference or a type mismatch;
//! nothing panics.
//!
//! ```
//! use arkline::model::expr::{self, MapContext, Value};
//! let e = expr::parse("branch == 'main' && params.deploy").unwrap();
//! let mut ctx = MapContext::default();
//! ctx.branch = Some("main".into());
//! ctx.params.insert("deploy".into(), Value::Bool(true));
//! assert_eq!(expr::evaluate(&e, &ctx), Ok(Value::Bool(true)));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use crate::model::diagnostic::did_you_mean;
use crate::model::hash_files;

/// Parentheses, `!` and lists may nest this deep; deeper input is refused so the
/// recursive parser and evaluator cannot overflow the stack.
pub const MAX_DEPTH: usize = 32;

/// Binary operators (`&&`, `||`, `==`, `!=`, `in`) one expression may hold. A
/// chain of `&&` or `||` parses into a tree as deep as it is long, which the
/// recursive evaluator, reference collector and drop walk: the cap keeps that
/// depth (with [`MAX_DEPTH`]) far from any thread's stack (fuzzing found 25,000
/// `&&` overflowing a 2 MiB worker stack).
pub const MAX_OPERATORS: usize = 256;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value.
    Literal(Value),
    /// A list literal.
    List(Vec<Expr>),
    /// A reference, with its byte range in the expression text.
    Ref(Reference, std::ops::Range<usize>),
    /// `!e`.
    Not(Box<Expr>),
    /// `a op b`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args…)`, with the byte range of the call.
    Call(Func, Vec<Expr>, std::ops::Range<usize>),
}

/// A function of the expression language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// `contains(haystack, needle)`: substring, or list membership.
    Contains,
    /// `startsWith(s, prefix)`.
    StartsWith,
    /// `endsWith(s, suffix)`.
    EndsWith,
    /// `format(template, args…)`: `{0}`, `{1}`… replaced by the arguments.
    Format,
    /// `join(list, separator)`; the separator defaults to `,`.
    Join,
    /// `toJSON(value)`: the value as JSON text.
    ToJson,
    /// `fromJSON(text)`: a JSON string, number, boolean or list as a value.
    FromJson,
    /// `success()`: no earlier step failed and the run is not cancelled.
    Success,
    /// `failure()`: an earlier step failed.
    Failure,
    /// `always()`: true, whatever happened.
    Always,
    /// `cancelled()`: the run was cancelled.
    Cancelled,
    /// `hashFiles(pattern, …)`: the SHA-256 of the workspace files the globs
    /// select (see [`EvalContext::hash_files`]).
    HashFiles,
}

impl Func {
    const ALL: [(&'static str, Func); 12] = [
        ("contains", Func::Contains),
        ("startsWith", Func::StartsWith),
        ("endsWith", Func::EndsWith),
        ("format", Func::Format),
        ("join", Func::Join),
        ("toJSON", Func::ToJson),
        ("fromJSON", Func::FromJson),
        ("success", Func::Success),
        ("failure", Func::Failure),
        ("always", Func::Always),
        ("cancelled", Func::Cancelled),
        ("hashFiles", Func::HashFiles),
    ];

    /// The function's name in expressions.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether it is a status function (`success`, `failure`, `always`,
    /// `cancelled`), which reads the run's [`StatusFacts`].
    pub fn is_status(self) -> bool {
        matches!(
            self,
            Func::Success | Func::Failure | Func::Always | Func::Cancelled
        )
    }

    /// How many arguments it takes, at least and at most.
    fn arity(self) -> (usize, usize) {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith => (2, 2),
            Func::Format => (1, 32),
            Func::Join => (1, 2),
            Func::ToJson | Func::FromJson => (1, 1),
            Func::Success | Func::Failure | Func::Always | Func::Cancelled => (0, 0),
            Func::HashFiles => (1, MAX_HASH_PATTERNS),
        }
    }
}

/// Patterns one `hashFiles` call may take.
pub const MAX_HASH_PATTERNS: usize = 16;

/// What the status functions read: how the run has gone so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusFacts {
    /// An earlier step (or stage) failed: `failure()` is true, `success()` false.
    pub failed: bool,
    /// The run was cancelled: `cancelled()` is true, `success()` false.
    pub cancelled: bool,
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `&&`
    And,
    /// `||`
    Or,
    /// `in`: list membership or substring.
    In,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A name an expression can read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    /// `params.<name>`
    Param(String),
    /// `secrets.<name>`
    Secret(String),
    /// `env.<name>`: an environment variable given to the step.
    Env(String),
    /// `matrix.<name>`: a value of the matrix cell the step runs for.
    Matrix(String),
    /// `steps.<step>.outputs.<key>` (or `steps['<step>'].outputs.<key>`)
    StepOutput {
        /// Step name.
        step: String,
        /// Output key.
        key: String,
    },
    /// `steps.<step>.state` (or `steps['<step>'].state`)
    StepState(String),
    /// `event`
    Event,
    /// `branch`
    Branch,
    /// `commit`
    Commit,
    /// `pipeline`: the pipeline's name.
    Pipeline,
    /// `trigger.image`, `trigger.digest`, `trigger.tag`: the image push
    /// that started the execution (empty strings otherwise).
    Trigger(TriggerField),
}

/// A field of `trigger` (the image push that started an execution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TriggerField {
    /// `trigger.image`: the repository, with the registry's host when known.
    Image,
    /// `trigger.digest`: the pushed manifest's digest.
    Digest,
    /// `trigger.tag`: the tag pushed (empty for a push by digest).
    Tag,
}

impl TriggerField {
    /// The field's name after `trigger.`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Digest => "digest",
            Self::Tag => "tag",
        }
    }
}

impl Reference {
    /// The step a reference reads, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Self::StepOutput { step, .. } | Self::StepState(step) => Some(step),
            _ => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Param(n) => write!(f, "params.{n}"),
            Self::Secret(n) => write!(f, "secrets.{n}"),
            Self::Env(n) => write!(f, "env.{n}"),
            Self::Matrix(n) => write!(f, "matrix.{n}"),
            Self::StepOutput { step, key } if is_plain_name(key) => {
                write!(f, "{}.outputs.{key}", StepPath(step))
            }
            Self::StepOutput { step, key } => {
                write!(f, "{}.outputs[", StepPath(step))?;
                quoted(f, key)?;
                f.write_str("]")
            }
            Self::StepState(s) => write!(f, "{}.state", StepPath(s)),
            Self::Event => f.write_str("event"),
            Self::Branch => f.write_str("branch"),
            Self::Commit => f.write_str("commit"),
            Self::Pipeline => f.write_str("pipeline"),
            Self::Trigger(field) => write!(f, "trigger.{}", field.name()),
        }
    }
}

/// `steps.<name>`, or `steps['<name>']` when the name is not one the lexer
/// reads as a single name, so that a displayed reference parses back.
struct StepPath<'a>(&'a str);

impl fmt::Display for StepPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0;
        if is_plain_name(name) {
            return write!(f, "steps.{name}");
        }
        f.write_str("steps[")?;
        quoted(f, name)?;
        f.write_str("]")
    }
}

/// `'text'`, escaped so the lexer reads it back.
fn quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("'")?;
    for c in text.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\'' => f.write_str("\\'")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("'")
}

/// Whether the lexer reads `name` as one name: an ASCII letter or `_`, then
/// ASCII letters, digits, `_` and `-`.
fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    String(String),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A list.
    List(Vec<Value>),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Self::String(_) => "string",
            Self::Number(_) => "number",
            Self::Bool(_) => "bool",
            Self::List(_) => "list",
        }
    }

    /// Converts a JSON value (e.g. a param value); `null` and objects have no
    /// counterpart and give `None`.
    pub fn from_json(v: &serde_json::Value) -> Option<Value> {
        match v {
            serde_json::Value::String(s) => Some(Value::String(s.clone())),
            serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            serde_json::Value::Array(a) => a
                .iter()
                .map(Value::from_json)
                .collect::<Option<Vec<_>>>()
                .map(Value::List),
            serde_json::Value::Null | serde_json::Value::Object(_) => None,
        }
    }
}

impl fmt::Display for Value {
    /// The text interpolation inserts: strings as-is, whole numbers without `.0`,
    /// lists as JSON-like `["a", "b"]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => write!(f, "{}", *n as i64),
            Self::Number(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match item {
                        Self::String(s) => write!(f, "{s:?}")?,
                        other => write!(f, "{other}")?,
                    }
                }
                f.write_str("]")
            }
        }
    }
}

/// A parse error, with the byte range of the offending text in the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// What is wrong.
    pub message: String,
    /// Byte range in the expression (or template) text.
    pub range: std::ops::Range<usize>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl ExprError {
    fn new(message: impl Into<String>, range: std::ops::Range<usize>) -> Self {
        Self {
            message: message.into(),
            range,
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn shifted(mut self, by: usize) -> Self {
        self.range = self.range.start + by..self.range.end + by;
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
}

fn lex(src: &str) -> Result<Vec<(Tok, std::ops::Range<usize>)>, ExprError> {
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let mut end = i;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == '-' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push((Tok::Ident(src[i..end].to_owned()), i..end));
            continue;
        }
        if c.is_ascii_digit()
            || (c == '-' && src[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        {
            chars.next();
            let mut end = i + 1;
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_digit() || d == '.' {
                    end = j + 1;
                    chars.next();
                } else {
                    break;
                }
            }
            let text = &src[i..end];
            let n: f64 = text
                .parse()
                .map_err(|_| ExprError::new(format!("`{text}` is not a number"), i..end))?;
            out.push((Tok::Num(n), i..end));
            continue;
        }
        if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            let mut closed = None;
            while let Some((j, d)) = chars.next() {
                if d == c {
                    closed = Some(j + 1);
                    break;
                }
                if d == '\\' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, e)) => s.push(e),
                        None => break,
                    }
                } else {
                    s.push(d);
                }
            }
            let Some(end) = closed else {
                return Err(ExprError::new("unterminated string", i..src.len())
                    .hint(format!("close it with {c}")));
            };
            out.push((Tok::Str(s), i..end));
            continue;
        }
        let two = src.get(i..i + 2).unwrap_or("");
        let op = match two {
            "==" => Some("=="),
            "!=" => Some("!="),
            "&&" => Some("&&"),
            "||" => Some("||"),
            "<=" => Some("<="),
            ">=" => Some(">="),
            _ => None,
        };
        if let Some(op) = op {
            chars.next();
            chars.next();
            out.push((Tok::Op(op), i..i + 2));
            continue;
        }
        let op = match c {
            '!' => "!",
            '(' => "(",
            ')' => ")",
            '[' => "[",
            ']' => "]",
            ',' => ",",
            '.' => ".",
            '<' => "<",
            '>' => ">",
            _ => {
                let mut e =
                    ExprError::new(format!("unexpected character `{c}`"), i..i + c.len_utf8());
                e = match c {
                    '=' => e.hint("compare with `==`"),
                    '&' => e.hint("use `&&` for and"),
                    '|' => e.hint("use `||` for or"),
                    _ => e.hint(
                        "expressions use literals, references, functions, `== != < <= > >= && || ! in` and parentheses",
                    ),
                };
                return Err(e);
            }
        };
        chars.next();
        out.push((Tok::Op(op), i..i + 1));
    }
    Ok(out)
}

struct ExprParser<'a> {
    toks: Vec<(Tok, std::ops::Range<usize>)>,
    pos: usize,
    src: &'a str,
    depth: usize,
    operators: usize,
}

impl ExprParser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn range(&self) -> std::ops::Range<usize> {
        self.toks
            .get(self.pos)
            .map_or(self.src.len()..self.src.len(), |(_, r)| r.clone())
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), ExprError> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(ExprError::new(format!("expected `{op}`"), self.range()))
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(
                format!("expression nests deeper than {MAX_DEPTH} levels"),
                self.range(),
            ));
        }
        Ok(())
    }

    /// Counts one binary operator, refusing past [`MAX_OPERATORS`].
    fn operator(&mut self) -> Result<(), ExprError> {
        self.operators += 1;
        if self.operators > MAX_OPERATORS {
            return Err(ExprError::new(
                format!("expression has more than {MAX_OPERATORS} operators"),
                self.range(),
            )
            .hint("split the condition, or compute it in a step and test its output"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.eat_op("||") {
            self.operator()?;
            let right = self.and()?;
            left = Expr::Binary(BinOp::Or, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.cmp()?;
        while self.eat_op("&&") {
            self.operator()?;
            let right = self.cmp()?;
            left = Expr::Binary(BinOp::And, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let left = self.unary()?;
        let op = if self.eat_op("==") {
            BinOp::Eq
        } else if self.eat_op("!=") {
            BinOp::Ne
        } else if self.eat_op("<=") {
            BinOp::Le
        } else if self.eat_op(">=") {
            BinOp::Ge
        } else if self.eat_op("<") {
            BinOp::Lt
        } else if self.eat_op(">") {
            BinOp::Gt
        } else if matches!(self.peek(), Some(Tok::Ident(i)) if i == "in") {
            self.pos += 1;
            BinOp::In
        } else {
            return Ok(left);
        };
        self.operator()?;
        let right = self.unary()?;
        Ok(Expr::Binary(op, Box::new(left), Box::new(right)))
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.eat_op("!") {
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let range = self.range();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(
                ExprError::new("expected a value", range).hint("the expression ends too early")
            );
        };
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Tok::Num(n) => Ok(Expr::Literal(Value::Number(n))),
            Tok::Op("(") => {
                self.enter()?;
                let e = self.or()?;
                self.expect_op(")")?;
                self.depth -= 1;
                Ok(e)
            }
            Tok::Op("[") => {
                self.enter()?;
                let mut items = Vec::new();
                if !self.eat_op("]") {
                    loop {
                        items.push(self.or()?);
                        if self.eat_op("]") {
                            break;
                        }
                        self.expect_op(",")?;
                    }
                }
                self.depth -= 1;
                Ok(Expr::List(items))
            }
            Tok::Ident(id) if id == "true" => Ok(Expr::Literal(Value::Bool(true))),
            Tok::Ident(id) if id == "false" => Ok(Expr::Literal(Value::Bool(false))),
            Tok::Ident(id) if matches!(self.peek(), Some(Tok::Op("("))) => self.call(&id, range),
            Tok::Ident(id) => self.reference(id, range),
            Tok::Op(op) => Err(ExprError::new(
                format!("expected a value, found `{op}`"),
                range,
            )),
        }
    }

    /// A call: the name was read and `(` is next.
    fn call(&mut self, name: &str, range: std::ops::Range<usize>) -> Result<Expr, ExprError> {
        let Some(func) = Func::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f) else {
            let e = ExprError::new(format!("unknown function `{name}`"), range);
            let names = Func::ALL.iter().map(|(n, _)| *n);
            return Err(match did_you_mean(name, names) {
                Some(s) => e.hint(format!("did you mean `{s}`?")),
                None => {
                    let all: Vec<&str> = Func::ALL.iter().map(|(n, _)| *n).collect();
                    e.hint(format!("functions are {}", all.join(", ")))
                }
            });
        };
        self.expect_op("(")?;
        self.enter()?;
        let mut args = Vec::new();
        if !self.eat_op(")") {
            loop {
                args.push(self.or()?);
                if self.eat_op(")") {
                    break;
                }
                self.expect_op(",")?;
            }
        }
        self.depth -= 1;
        let end = self
            .toks
            .get(self.pos - 1)
            .map_or(range.end, |(_, r)| r.end);
        let whole = range.start..end;
        let (min, max) = func.arity();
        if args.len() < min || args.len() > max {
            let wanted = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(ExprError::new(
                format!("`{name}` takes {wanted} argument(s), found {}", args.len()),
                whole,
            ));
        }
        Ok(Expr::Call(func, args, whole))
    }

    fn reference(
        &mut self,
        first: String,
        range: std::ops::Range<usize>,
    ) -> Result<Expr, ExprError> {
        let bracketed = first == "steps" && matches!(self.peek(), Some(Tok::Op("[")));
        let mut path = vec![first];
        let mut end = range.end;
        if bracketed {
            // `steps['name']`: a matrix cell's step name has spaces and parentheses.
            self.pos += 1;
            match self.toks.get(self.pos).cloned() {
                Some((Tok::Str(name), r)) if name.is_empty() => {
                    return Err(ExprError::new("a step name cannot be empty", r));
                }
                Some((Tok::Str(name), _)) => {
                    path.push(name);
                    self.pos += 1;
                }
                _ => {
                    return Err(ExprError::new(
                        "expected a quoted step name after `steps[`",
                        self.range(),
                    )
                    .hint("write `steps['step name']`"));
                }
            }
            end = self.range().end;
            self.expect_op("]")?;
        }
        loop {
            if self.eat_op(".") {
                match self.toks.get(self.pos).cloned() {
                    Some((Tok::Ident(seg), r)) => {
                        path.push(seg);
                        end = r.end;
                        self.pos += 1;
                    }
                    _ => return Err(ExprError::new("expected a name after `.`", self.range())),
                }
            } else if path.len() == 3
                && path[0] == "steps"
                && path[2] == "outputs"
                && matches!(self.peek(), Some(Tok::Op("[")))
            {
                // `steps.x.outputs['key.with.dots']` (a called pipeline's outputs).
                self.pos += 1;
                match self.toks.get(self.pos).cloned() {
                    Some((Tok::Str(key), _)) if !key.is_empty() => {
                        path.push(key);
                        self.pos += 1;
                    }
                    _ => {
                        return Err(ExprError::new(
                            "expected a quoted output name after `outputs[`",
                            self.range(),
                        )
                        .hint("write `steps.<name>.outputs['key']`"));
                    }
                }
                end = self.range().end;
                self.expect_op("]")?;
            } else {
                break;
            }
        }
        let whole = range.start..end;
        let not_a_reference = || {
            let text = match path.as_slice() {
                [_, step, rest @ ..] if bracketed => {
                    let mut t = StepPath(step).to_string();
                    rest.iter().for_each(|seg| {
                        t.push('.');
                        t.push_str(seg);
                    });
                    t
                }
                _ => path.join("."),
            };
            ExprError::new(format!("`{text}` is not a reference"), whole.clone())
        };
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let r = match p.as_slice() {
            ["params", name] => Reference::Param((*name).to_owned()),
            ["secrets", name] => Reference::Secret((*name).to_owned()),
            ["env", name] => Reference::Env((*name).to_owned()),
            ["matrix", name] => Reference::Matrix((*name).to_owned()),
            ["steps", step, "outputs", key] => Reference::StepOutput {
                step: (*step).to_owned(),
                key: (*key).to_owned(),
            },
            ["steps", step, "state"] => Reference::StepState((*step).to_owned()),
            ["event"] => Reference::Event,
            ["branch"] => Reference::Branch,
            ["commit"] => Reference::Commit,
            ["pipeline"] => Reference::Pipeline,
            ["trigger", "image"] => Reference::Trigger(TriggerField::Image),
            ["trigger", "digest"] => Reference::Trigger(TriggerField::Digest),
            ["trigger", "tag"] => Reference::Trigger(TriggerField::Tag),
            ["trigger", ..] => {
                return Err(not_a_reference()
                    .hint("`trigger` has `trigger.image`, `trigger.digest` and `trigger.tag` (an `image_push` trigger's push)"));
            }
            ["steps"] => {
                return Err(not_a_reference()
                    .hint("use `steps.<name>.outputs.<key>` or `steps.<name>.state`"));
            }
            ["steps", step, ..] => {
                let step = StepPath(step);
                return Err(
                    not_a_reference().hint(format!("use `{step}.outputs.<key>` or `{step}.state`"))
                );
            }
            [root @ ("params" | "secrets" | "env" | "matrix"), ..] => {
                return Err(not_a_reference().hint(format!("use `{root}.<name>`")));
            }
            [root @ ("event" | "branch" | "commit" | "pipeline"), ..] => {
                return Err(not_a_reference().hint(format!("`{root}` has no fields")));
            }
            [root, ..] => {
                const ROOTS: [&str; 10] = [
                    "params", "secrets", "env", "matrix", "steps", "event", "branch", "commit",
                    "pipeline", "trigger",
                ];
                let e = ExprError::new(format!("unknown name `{root}`"), range);
                return Err(match did_you_mean(root, ROOTS) {
                    Some(s) if s != *root => e.hint(format!("did you mean `{s}`?")),
                    _ => e.hint("references start with `params.`, `secrets.`, `env.`, `matrix.`, `steps.`, `trigger.`, or are `event`, `branch`, `commit`, `pipeline`; quote string literals"),
                });
            }
            [] => return Err(ExprError::new("expected a reference", whole)),
        };
        Ok(Expr::Ref(r, whole))
    }
}

/// Parses an expression.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let toks = lex(src)?;
    if toks.is_empty() {
        return Err(ExprError::new("empty expression", 0..src.len()));
    }
    let mut p = ExprParser {
        toks,
        pos: 0,
        src,
        depth: 0,
        operators: 0,
    };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        let range = p.range();
        let found = src.get(range.clone()).unwrap_or_default().to_owned();
        return Err(ExprError::new(
            format!("unexpected `{found}` after a complete expression"),
            range,
        )
        .hint("join conditions with `&&` or `||`"));
    }
    Ok(e)
}

impl Expr {
    /// Every reference in the expression with its byte range.
    pub fn references(&self) -> Vec<(&Reference, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        self.collect_refs(&mut out);
        out
    }

    fn collect_refs<'a>(&'a self, out: &mut Vec<(&'a Reference, std::ops::Range<usize>)>) {
        match self {
            Self::Literal(_) => {}
            Self::List(items) => items.iter().for_each(|e| e.collect_refs(out)),
            Self::Ref(r, range) => out.push((r, range.clone())),
            Self::Not(e) => e.collect_refs(out),
            Self::Binary(_, a, b) => {
                a.collect_refs(out);
                b.collect_refs(out);
            }
            Self::Call(_, args, _) => args.iter().for_each(|e| e.collect_refs(out)),
        }
    }

    /// Every call of a status function (`success()`, `failure()`, `always()`,
    /// `cancelled()`) with its byte range, in text order, so that a validator
    /// can point at one used where the run's status is not known.
    pub fn status_calls(&self) -> Vec<(Func, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        self.collect_status_calls(&mut out);
        out
    }

    /// Whether a status function is called anywhere in the expression (GitHub
    /// runs a step whose `if` has none only when everything before succeeded).
    pub fn uses_status_function(&self) -> bool {
        match self {
            Self::Literal(_) | Self::Ref(..) => false,
            Self::List(items) => items.iter().any(Expr::uses_status_function),
            Self::Not(e) => e.uses_status_function(),
            Self::Binary(_, a, b) => a.uses_status_function() || b.uses_status_function(),
            Self::Call(func, args, _) => {
                func.is_status() || args.iter().any(Expr::uses_status_function)
            }
        }
    }

    fn collect_status_calls(&self, out: &mut Vec<(Func, std::ops::Range<usize>)>) {
        match self {
            Self::Literal(_) | Self::Ref(..) => {}
            Self::List(items) => items.iter().for_each(|e| e.collect_status_calls(out)),
            Self::Not(e) => e.collect_status_calls(out),
            Self::Binary(_, a, b) => {
                a.collect_status_calls(out);
                b.collect_status_calls(out);
            }
            Self::Call(func, args, range) => {
                if func.is_status() {
                    out.push((*func, range.clone()));
                }
                args.iter().for_each(|e| e.collect_status_calls(out));
            }
        }
    }
}

/// The message of the status functions where the context has no
/// [`StatusFacts`].
const STATUS_ONLY_IN_IF: &str =
    "status functions can be used only in a step's or stage's `if` condition";

/// The message of `hashFiles` where the context has no workspace.
const HASH_FILES_NEEDS_WORKSPACE: &str =
    "hashFiles needs a workspace; it can be used in a step's `with`, `env`, `if` and cache key";

/// What an expression reads its references from.
pub trait EvalContext {
    /// The value of a reference, `None` when it is not set.
    fn lookup(&self, reference: &Reference) -> Option<Value>;

    /// How the run has gone, for the status functions; `None` (the default)
    /// where they cannot be used, which makes `success()`, `failure()` and
    /// `cancelled()` fail to evaluate (`always()` is true regardless).
    fn status(&self) -> Option<StatusFacts> {
        None
    }

    /// `hashFiles(patterns…)`: the hex SHA-256 of the workspace files the
    /// globs select, or `""` when none does; the error is the message the
    /// user sees. The default has no workspace and always fails.
    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        let _ = patterns;
        Err(HASH_FILES_NEEDS_WORKSPACE.into())
    }
}

/// An [`EvalContext`] made of maps, for controllers and tests.
#[derive(Debug, Clone, Default)]
pub struct MapContext {
    /// Param values.
    pub params: BTreeMap<String, Value>,
    /// Secret plaintexts.
    pub secrets: BTreeMap<String, String>,
    /// Step → output key → value.
    pub outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// Step → state name (`Succeeded`, `Failed`, `Skipped`, …).
    pub states: BTreeMap<String, String>,
    /// Event name.
    pub event: Option<String>,
    /// Branch.
    pub branch: Option<String>,
    /// Commit.
    pub commit: Option<String>,
    /// Environment variables (`env.<name>`).
    pub env: BTreeMap<String, String>,
    /// The matrix cell's values (`matrix.<name>`).
    pub matrix: BTreeMap<String, Value>,
    /// The pipeline's name (`pipeline`).
    pub pipeline: Option<String>,
    /// The image push that started the execution (`trigger.*`); `None`
    /// gives empty strings.
    pub image: Option<crate::model::ImagePush>,
    /// How the run has gone, for the status functions; `None` outside an `if`.
    pub status: Option<StatusFacts>,
    /// The directory `hashFiles` globs are relative to; `None` makes
    /// `hashFiles` fail.
    pub workspace: Option<std::path::PathBuf>,
}

impl EvalContext for MapContext {
    fn lookup(&self, r: &Reference) -> Option<Value> {
        match r {
            Reference::Param(n) => self.params.get(n).cloned(),
            Reference::Secret(n) => self.secrets.get(n).cloned().map(Value::String),
            Reference::StepOutput { step, key } => self
                .outputs
                .get(step)
                .and_then(|o| o.get(key))
                .cloned()
                .map(Value::String),
            Reference::StepState(s) => self.states.get(s).cloned().map(Value::String),
            Reference::Event => self.event.clone().map(Value::String),
            Reference::Branch => self.branch.clone().map(Value::String),
            Reference::Commit => self.commit.clone().map(Value::String),
            Reference::Env(n) => self.env.get(n).cloned().map(Value::String),
            Reference::Matrix(n) => self.matrix.get(n).cloned(),
            Reference::Pipeline => self.pipeline.clone().map(Value::String),
            Reference::Trigger(field) => {
                let push = self.image.as_ref();
                let text = match field {
                    TriggerField::Image => push.map(|p| p.image.clone()),
                    TriggerField::Digest => push.map(|p| p.digest.clone()),
                    TriggerField::Tag => push.map(|p| p.tag.clone()),
                };
                Some(Value::String(text.unwrap_or_default()))
            }
        }
    }

    fn status(&self) -> Option<StatusFacts> {
        self.status
    }

    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        match &self.workspace {
            Some(root) => hash_files::hash_files(root, patterns).map_err(|e| e.to_string()),
            None => Err(HASH_FILES_NEEDS_WORKSPACE.into()),
        }
    }
}

/// Why evaluation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// A reference has no value in the context.
    #[error("`{0}` has no value")]
    Missing(Reference),
    /// An operator got operands of the wrong type.
    #[error("`{op}` cannot be applied to {left} and {right}")]
    Type {
        /// The operator.
        op: &'static str,
        /// Left operand type.
        left: &'static str,
        /// Right operand type (empty for unary).
        right: &'static str,
    },
    /// A condition evaluated to something other than a boolean.
    #[error("a condition must be true or false, found a {0}")]
    NotBool(&'static str),
    /// A function got arguments it cannot use.
    #[error("`{func}`: {message}")]
    Function {
        /// The function's name.
        func: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Evaluates an expression. Never panics: a missing reference or a type error
/// is an [`EvalError`].
pub fn evaluate(expr: &Expr, ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    match expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::List(items) => items
            .iter()
            .map(|e| evaluate(e, ctx))
            .collect::<Result<_, _>>()
            .map(Value::List),
        Expr::Ref(r, _) => ctx.lookup(r).ok_or_else(|| EvalError::Missing(r.clone())),
        Expr::Not(e) => match evaluate(e, ctx)? {
            Value::Bool(b) => Ok(Value::Bool(!b)),
            other => Err(EvalError::Type {
                op: "!",
                left: other.type_name(),
                right: "nothing",
            }),
        },
        Expr::Call(func, args, _) => call(
            *func,
            args.iter()
                .map(|e| evaluate(e, ctx))
                .collect::<Result<_, _>>()?,
            ctx,
        ),
        Expr::Binary(op @ (BinOp::And | BinOp::Or), a, b) => {
            let left = bool_operand(evaluate(a, ctx)?, *op)?;
            // Short-circuit so `steps.x.state == 'Succeeded' && steps.x.outputs.y`
            // does not fail on the missing output of a failed step.
            match (op, left) {
                (BinOp::And, false) => Ok(Value::Bool(false)),
                (BinOp::Or, true) => Ok(Value::Bool(true)),
                _ => Ok(Value::Bool(bool_operand(evaluate(b, ctx)?, *op)?)),
            }
        }
        Expr::Binary(op, a, b) => {
            let (l, r) = (evaluate(a, ctx)?, evaluate(b, ctx)?);
            match op {
                BinOp::Eq => Ok(Value::Bool(l == r)),
                BinOp::Ne => Ok(Value::Bool(l != r)),
                BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => compare(*op, &l, &r),
                _ => match (&l, &r) {
                    (_, Value::List(items)) => Ok(Value::Bool(items.contains(&l))),
                    (Value::String(needle), Value::String(hay)) => {
                        Ok(Value::Bool(hay.contains(needle.as_str())))
                    }
                    _ => Err(EvalError::Type {
                        op: "in",
                        left: l.type_name(),
                        right: r.type_name(),
                    }),
                },
            }
        }
    }
}

/// `<`, `<=`, `>`, `>=` on two numbers or two strings.
fn compare(op: BinOp, l: &Value, r: &Value) -> Result<Value, EvalError> {
    use std::cmp::Ordering;
    let name = match op {
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        _ => ">=",
    };
    let ordering = match (l, r) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return Err(EvalError::Type {
            op: name,
            left: l.type_name(),
            right: r.type_name(),
        });
    };
    Ok(Value::Bool(match op {
        BinOp::Lt => ordering == Ordering::Less,
        BinOp::Le => ordering != Ordering::Greater,
        BinOp::Gt => ordering == Ordering::Greater,
        _ => ordering != Ordering::Less,
    }))
}

/// Calls a function on evaluated arguments; the status functions and
/// `hashFiles` ask the context.
fn call(func: Func, args: Vec<Value>, ctx: &dyn EvalContext) -> Result<Value, EvalError> {
    let fail = |message: String| EvalError::Function {
        func: func.name(),
        message,
    };
    let string = |v: &Value, what: &str| match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(fail(format!(
            "{what} must be a string, found a {}",
            other.type_name()
        ))),
    };
    match func {
        Func::Contains => match (&args[0], &args[1]) {
            (Value::List(items), needle) => Ok(Value::Bool(items.contains(needle))),
            (Value::String(hay), Value::String(needle)) => {
                Ok(Value::Bool(hay.contains(needle.as_str())))
            }
            (hay, needle) => Err(fail(format!(
                "cannot look for a {} in a {}",
                needle.type_name(),
                hay.type_name()
            ))),
        },
        Func::StartsWith | Func::EndsWith => {
            let s = string(&args[0], "the first argument")?;
            let affix = string(&args[1], "the second argument")?;
            Ok(Value::Bool(if func == Func::StartsWith {
                s.starts_with(&affix)
            } else {
                s.ends_with(&affix)
            }))
        }
        Func::Format => {
            let template = string(&args[0], "the template")?;
            let mut out = String::new();
            let mut rest = template.as_str();
            while let Some(i) = rest.find(['{', '}']) {
                out.push_str(&rest[..i]);
                let tail = &rest[i..];
                if let Some(after) = tail.strip_prefix("{{") {
                    out.push('{');
                    rest = after;
                } else if let Some(after) = tail.strip_prefix("}}") {
                    out.push('}');
                    rest = after;
                } else if tail.starts_with('{') {
                    let close = tail.find('}').ok_or_else(|| {
                        fail("a `{` is not closed (write `{{` for a brace)".to_owned())
                    })?;
                    let index: usize = tail[1..close].parse().map_err(|_| {
                        fail(format!(
                            "`{}` is not an argument number such as {{0}}",
                            &tail[..=close]
                        ))
                    })?;
                    let value = args.get(index + 1).ok_or_else(|| {
                        fail(format!(
                            "{{{index}}} has no argument ({} given after the template)",
                            args.len() - 1
                        ))
                    })?;
                    out.push_str(&value.to_string());
                    rest = &tail[close + 1..];
                } else {
                    return Err(fail(
                        "a `}` is not opened (write `}}` for a brace)".to_owned(),
                    ));
                }
            }
            out.push_str(rest);
            Ok(Value::String(out))
        }
        Func::Join => {
            let separator = match args.get(1) {
                Some(v) => string(v, "the separator")?,
                None => ",".to_owned(),
            };
            match &args[0] {
                Value::List(items) => Ok(Value::String(
                    items
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(&separator),
                )),
                other => Ok(Value::String(other.to_string())),
            }
        }
        Func::ToJson => Ok(Value::String(to_json(&args[0]).to_string())),
        Func::FromJson => {
            let text = string(&args[0], "the argument")?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
            Value::from_json(&json).ok_or_else(|| {
                fail("only strings, numbers, booleans and lists of them are values here (not null or objects)".to_owned())
            })
        }
        Func::Always => Ok(Value::Bool(true)),
        Func::Success | Func::Failure | Func::Cancelled => {
            let facts = ctx
                .status()
                .ok_or_else(|| fail(STATUS_ONLY_IN_IF.to_owned()))?;
            Ok(Value::Bool(match func {
                Func::Success => !facts.failed && !facts.cancelled,
                Func::Failure => facts.failed,
                _ => facts.cancelled,
            }))
        }
        Func::HashFiles => {
            let patterns = args
                .iter()
                .enumerate()
                .map(|(i, v)| string(v, &format!("pattern {}", i + 1)))
                .collect::<Result<Vec<_>, _>>()?;
            ctx.hash_files(&patterns).map(Value::String).map_err(fail)
        }
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::List(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
    }
}

fn bool_operand(v: Value, op: BinOp) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(b),
        other => Err(EvalError::Type {
            op: if op == BinOp::And { "&&" } else { "||" },
            left: other.type_name(),
            right: "bool",
        }),
    }
}

/// Evaluates a condition, which must give a boolean.
pub fn evaluate_condition(expr: &Expr, ctx: &dyn EvalContext) -> Result<bool, EvalError> {
    match evaluate(expr, ctx)? {
        Value::Bool(b) => Ok(b),
        other => Err(EvalError::NotBool(other.type_name())),
    }
}

/// A string with `${{ … }}` interpolations, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Literal text and expressions, in order.
    pub parts: Vec<TemplatePart>,
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// An expression and the byte offset of its text in the template.
    Expr(Expr, usize),
}

/// Parses a template; errors carry byte ranges in the template text.
pub fn parse_template(src: &str) -> Result<Template, ExprError> {
    let mut parts = Vec::new();
    let mut rest = 0;
    while let Some(found) = src[rest..].find("${{") {
        let open = rest + found;
        if open > rest {
            parts.push(TemplatePart::Text(src[rest..open].to_owned()));
        }
        let inner_start = open + 3;
        let Some(close) = src[inner_start..].find("}}") else {
            return Err(ExprError::new("`${{` is never closed", open..src.len())
                .hint("end the interpolation with `}}`"));
        };
        let inner = &src[inner_start..inner_start + close];
        let expr = parse(inner).map_err(|e| e.shifted(inner_start))?;
        parts.push(TemplatePart::Expr(expr, inner_start));
        rest = inner_start + close + 2;
    }
    if rest < src.len() {
        parts.push(TemplatePart::Text(src[rest..].to_owned()));
    }
    Ok(Template { parts })
}

impl Template {
    /// Every reference with its byte range in the template text.
    pub fn references(&self) -> Vec<(&Reference, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        for part in &self.parts {
            if let TemplatePart::Expr(e, offset) = part {
                out.extend(
                    e.references()
                        .into_iter()
                        .map(|(r, range)| (r, range.start + offset..range.end + offset)),
                );
            }
        }
        out
    }

    /// Every status-function call with its byte range in the template text
    /// (see [`Expr::status_calls`]).
    pub fn status_calls(&self) -> Vec<(Func, std::ops::Range<usize>)> {
        let mut out = Vec::new();
        for part in &self.parts {
            if let TemplatePart::Expr(e, offset) = part {
                out.extend(
                    e.status_calls()
                        .into_iter()
                        .map(|(f, range)| (f, range.start + offset..range.end + offset)),
                );
            }
        }
        out
    }

    /// Whether any interpolation calls a status function.
    pub fn uses_status_function(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, TemplatePart::Expr(e, _) if e.uses_status_function()))
    }

    /// Renders the template against a context.
    pub fn render(&self, ctx: &dyn EvalContext) -> Result<String, EvalError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::Expr(e, _) => out.push_str(&evaluate(e, ctx)?.to_string()),
            }
        }
        Ok(out)
    }
}

/// Why interpolation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpolateError {
    /// The template does not parse.
    #[error("bad interpolation: {0}")]
    Parse(#[from] ExprError),
    /// An expression failed to evaluate.
    #[error("interpolation failed: {0}")]
    Eval(#[from] EvalError),
}

/// Parses and renders `template` in one go.
pub fn interpolate(template: &str, ctx: &dyn EvalContext) -> Result<String, InterpolateError> {
    Ok(parse_template(template)?.render(ctx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_with_params(src: &str) -> Result<Value, String> {
        let mut ctx = MapContext::default();
        ctx.params.insert("n".into(), Value::Number(3.0));
        ctx.params
            .insert("tag".into(), Value::String("v1.2.0".into()));
        ctx.params.insert(
            "os".into(),
            Value::List(vec![
                Value::String("linux".into()),
                Value::String("mac".into()),
            ]),
        );
        let e = parse(src).map_err(|e| format!("parse: {e}"))?;
        evaluate(&e, &ctx).map_err(|e| e.to_string())
    }

    #[test]
    fn functions_evaluate_as_documented() {
        let s = |v: &str| Ok(Value::String(v.into()));
        let b = |v: bool| Ok(Value::Bool(v));
        assert_eq!(eval_with_params("contains(params.tag, '1.2')"), b(true));
        assert_eq!(eval_with_params("contains(params.os, 'mac')"), b(true));
        assert_eq!(eval_with_params("contains(params.os, 'win')"), b(false));
        assert_eq!(eval_with_params("startsWith(params.tag, 'v1')"), b(true));
        assert_eq!(eval_with_params("endsWith(params.tag, '.0')"), b(true));
        assert_eq!(
            eval_with_params("format('{0}-{1} {{x}} {0}', params.tag, params.n)"),
            s("v1.2.0-3 {x} v1.2.0")
        );
        assert_eq!(eval_with_params("join(params.os)"), s("linux,mac"));
        assert_eq!(eval_with_params("join(params.os, ' / ')"), s("linux / mac"));
        assert_eq!(
            eval_with_params("toJSON(params.os)"),
            s(r#"["linux","mac"]"#)
        );
        assert_eq!(
            eval_with_params(r#"fromJSON('[1, "a", true]')"#),
            Ok(Value::List(vec![
                Value::Number(1.0),
                Value::String("a".into()),
                Value::Bool(true)
            ]))
        );
        assert_eq!(
            eval_with_params(
                "contains(fromJSON(toJSON(params.os)), 'linux') && !contains('abc', 'd')"
            ),
            b(true)
        );
    }

    #[test]
    fn comparisons_order_numbers_and_strings() {
        let b = |v: bool| Ok(Value::Bool(v));
        assert_eq!(eval_with_params("params.n > 2"), b(true));
        assert_eq!(eval_with_params("params.n >= 3 && params.n <= 3"), b(true));
        assert_eq!(eval_with_params("params.n < 3"), b(false));
        assert_eq!(eval_with_params("'a' < 'b'"), b(true));
        let err = eval_with_params("params.n < 'x'").expect_err("type error");
        assert!(
            err.contains("`<` cannot be applied to number and string"),
            "{err}"
        );
    }

    #[test]
    fn function_mistakes_are_reported_with_positions_or_reasons() {
        let err = parse("startswith(branch, 'release/')").expect_err("unknown");
        assert_eq!(err.message, "unknown function `startswith`");
        assert_eq!(err.range, 0..10);
        assert_eq!(err.hint.as_deref(), Some("did you mean `startsWith`?"));
        let err = parse("contains('a')").expect_err("arity");
        assert_eq!(err.message, "`contains` takes 2 argument(s), found 1");
        assert_eq!(err.range, 0..13);
        let err = eval_with_params("format('{2}', 1)").expect_err("missing argument");
        assert!(err.contains("{2} has no argument"), "{err}");
        let err = eval_with_params("fromJSON('{\"a\": 1}')").expect_err("object");
        assert!(err.contains("not null or objects"), "{err}");
        let err = eval_with_params("startsWith(params.n, 'x')").expect_err("type");
        assert!(err.contains("must be a string, found a number"), "{err}");
        // References inside calls are found (validation checks them).
        let e = parse("contains(steps.build.outputs.tags, params.tag)").expect("parses");
        assert_eq!(e.references().len(), 2);
    }

    /// Found by fuzzing (`fuzz/`): a long `&&` chain parsed into a tree as
    /// deep as the chain, and walking it overflowed a worker's stack. The cap
    /// refuses it; what is under the cap parses, evaluates and drops on a
    /// 2 MiB stack (a tokio worker's).
    #[test]
    fn long_operator_chains_are_refused_and_what_is_allowed_runs_on_a_small_stack() {
        let chain = |n: usize| vec!["true"; n + 1].join(" && ");
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let err = parse(&chain(100_000)).expect_err("refused");
                assert!(
                    err.to_string()
                        .contains(&format!("more than {MAX_OPERATORS} operators")),
                    "{err}"
                );
                let mixed = vec!["'a' == 'a'"; MAX_OPERATORS / 2 + 1].join(" || ");
                assert!(parse(&mixed).is_err(), "`==` counts too");
                let allowed = parse(&chain(MAX_OPERATORS)).expect("parses");
                assert_eq!(
                    evaluate(&allowed, &MapContext::default()),
                    Ok(Value::Bool(true))
                );
                let mut refs = Vec::new();
                allowed.collect_refs(&mut refs);
                drop(allowed);
            })
            .expect("thread")
            .join()
            .expect("no stack overflow");
    }

    fn ctx() -> MapContext {
        let mut c = MapContext::default();
        c.params.insert("env".into(), Value::String("prod".into()));
        c.params.insert("n".into(), Value::Number(3.0));
        c.states.insert("build".into(), "Succeeded".into());
        c.outputs
            .entry("build".into())
            .or_default()
            .insert("image".into(), "app:1".into());
        c.branch = Some("release/1.2".into());
        c.event = Some("push".into());
        c
    }

    fn eval(s: &str) -> Result<Value, EvalError> {
        evaluate(
            &parse(s)
                .map_err(|e| panic!("{s}: {e}"))
                .unwrap_or(Expr::Literal(Value::Bool(false))),
            &ctx(),
        )
    }

    #[test]
    fn operators() {
        assert_eq!(
            eval("params.env == 'prod' && !(event != 'push')"),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            eval("params.env in ['dev', 'stage']"),
            Ok(Value::Bool(false))
        );
        assert_eq!(eval("'release/' in branch"), Ok(Value::Bool(true)));
        assert_eq!(
            eval("steps.build.state == 'Failed' || params.n == 3"),
            Ok(Value::Bool(true))
        );
        assert_eq!(eval("false && params.missing"), Ok(Value::Bool(false)));
    }

    #[test]
    fn errors_are_values() {
        assert_eq!(
            eval("params.missing"),
            Err(EvalError::Missing(Reference::Param("missing".into())))
        );
        assert!(matches!(
            eval("params.n && true"),
            Err(EvalError::Type { op: "&&", .. })
        ));
        assert!(matches!(
            eval("1 in 2"),
            Err(EvalError::Type { op: "in", .. })
        ));
    }

    #[test]
    fn parse_errors_point_at_the_text() {
        let e = parse("params.x = 'a'").err();
        assert_eq!(e.as_ref().map(|e| e.range.clone()), Some(9..10));
        let e = parse("parms.x").err();
        assert_eq!(
            e.and_then(|e| e.hint),
            Some("did you mean `params`?".into())
        );
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn env_matrix_and_pipeline_references() {
        let mut c = ctx();
        c.env.insert("RUST_LOG".into(), "debug".into());
        c.matrix.insert("os".into(), Value::String("linux".into()));
        c.matrix.insert("shard".into(), Value::Number(2.0));
        c.pipeline = Some("release".into());
        let eval = |src: &str| evaluate(&parse(src).expect(src), &c);
        assert_eq!(eval("env.RUST_LOG"), Ok(Value::String("debug".into())));
        assert_eq!(
            eval("matrix.os == 'linux' && matrix.shard > 1"),
            Ok(Value::Bool(true))
        );
        assert_eq!(eval("pipeline"), Ok(Value::String("release".into())));
        assert_eq!(
            eval("env.HOME"),
            Err(EvalError::Missing(Reference::Env("HOME".into())))
        );
        let refs: Vec<Reference> = parse("env.A == matrix.b || pipeline == 'p'")
            .expect("parses")
            .references()
            .into_iter()
            .map(|(r, _)| r.clone())
            .collect();
        assert_eq!(
            refs,
            [
                Reference::Env("A".into()),
                Reference::Matrix("b".into()),
                Reference::Pipeline
            ]
        );
        for r in &refs {
            assert_eq!(
                parse(&r.to_string()),
                Ok(Expr::Ref(r.clone(), 0..r.to_string().len()))
            );
        }
        let err = parse("env").expect_err("no name");
        assert_eq!(err.hint.as_deref(), Some("use `env.<name>`"));
        let err = parse("pipeline.name").expect_err("no fields");
        assert_eq!(err.message, "`pipeline.name` is not a reference");
        assert_eq!(err.range, 0..13);
        let err = parse("matrx.os").expect_err("misspelt");
        assert_eq!(err.hint.as_deref(), Some("did you mean `matrix`?"));
    }

    #[test]
    fn bracketed_step_names_parse_and_display_round_trips() {
        let e = parse("steps['build (linux, 1)'].outputs.image").expect("parses");
        let output = Reference::StepOutput {
            step: "build (linux, 1)".into(),
            key: "image".into(),
        };
        assert_eq!(e, Expr::Ref(output.clone(), 0..39));
        assert_eq!(
            parse(r#"steps["x"].state"#),
            Ok(Expr::Ref(Reference::StepState("x".into()), 0..16))
        );
        // A plain name displays in the dotted form, anything else bracketed
        // (quotes and backslashes escaped), and either parses back.
        assert_eq!(
            Reference::StepState("x".into()).to_string(),
            "steps.x.state"
        );
        assert_eq!(
            output.to_string(),
            "steps['build (linux, 1)'].outputs.image"
        );
        for step in [
            "build (linux, 1)",
            "it's",
            "a\\b",
            "x.y",
            "1st",
            "tab\there",
            "é",
        ] {
            for r in [
                Reference::StepState(step.into()),
                Reference::StepOutput {
                    step: step.into(),
                    key: "k-1".into(),
                },
            ] {
                let text = r.to_string();
                assert!(text.starts_with("steps['"), "{text}");
                match parse(&text) {
                    Ok(Expr::Ref(back, range)) => {
                        assert_eq!(back, r, "{text}");
                        assert_eq!(range, 0..text.len(), "{text}");
                    }
                    other => panic!("{text} parsed as {other:?}"),
                }
            }
        }
        let mut c = ctx();
        c.states.insert("build (linux, 1)".into(), "Failed".into());
        assert_eq!(
            evaluate(
                &parse("steps['build (linux, 1)'].state == 'Failed'").expect("parses"),
                &c
            ),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn bracketed_output_keys_parse_and_display_round_trips() {
        let e = parse("steps.call.outputs['image.text'] == 'x'").expect("parses");
        let Expr::Binary(_, left, _) = e else {
            panic!("a comparison")
        };
        let key = Reference::StepOutput {
            step: "call".into(),
            key: "image.text".into(),
        };
        assert_eq!(*left, Expr::Ref(key.clone(), 0..32));
        assert_eq!(key.to_string(), "steps.call.outputs['image.text']");
        assert_eq!(parse(&key.to_string()), Ok(Expr::Ref(key, 0..32)));
        let err = parse("steps.call.outputs[1]").expect_err("unquoted");
        assert_eq!(
            err.message,
            "expected a quoted output name after `outputs[`"
        );
    }

    #[test]
    fn bracketed_step_name_mistakes_point_at_the_text() {
        let err = parse("steps[build].state").expect_err("unquoted");
        assert_eq!(err.message, "expected a quoted step name after `steps[`");
        assert_eq!(err.range, 6..11);
        let err = parse("steps['a'.state").expect_err("unclosed");
        assert_eq!(err.message, "expected `]`");
        assert_eq!(err.range, 9..10);
        let err = parse("steps[''].state").expect_err("empty");
        assert_eq!(err.message, "a step name cannot be empty");
        assert_eq!(err.range, 6..8);
        let err = parse("steps['a b'].result").expect_err("no such field");
        assert_eq!(err.message, "`steps['a b'].result` is not a reference");
        assert_eq!(err.range, 0..19);
        assert_eq!(
            err.hint.as_deref(),
            Some("use `steps['a b'].outputs.<key>` or `steps['a b'].state`")
        );
        let err = parse("steps['a b']").expect_err("no field");
        assert_eq!(err.range, 0..12);
    }

    fn with_status(failed: bool, cancelled: bool) -> MapContext {
        MapContext {
            status: Some(StatusFacts { failed, cancelled }),
            ..ctx()
        }
    }

    #[test]
    fn status_functions_read_the_status_facts() {
        let run = |src: &str, c: &MapContext| evaluate(&parse(src).expect(src), c);
        let t = Ok(Value::Bool(true));
        let f = Ok(Value::Bool(false));
        let ok = with_status(false, false);
        let failed = with_status(true, false);
        let cancelled = with_status(false, true);
        assert_eq!(run("success()", &ok), t);
        assert_eq!(run("success()", &failed), f);
        assert_eq!(run("success()", &cancelled), f);
        assert_eq!(run("failure()", &ok), f);
        assert_eq!(run("failure()", &failed), t);
        assert_eq!(run("cancelled()", &cancelled), t);
        assert_eq!(run("cancelled()", &failed), f);
        for c in [&ok, &failed, &cancelled, &ctx()] {
            assert_eq!(run("always()", c), t);
        }
        assert_eq!(
            run("failure() && steps.build.state == 'Succeeded'", &failed),
            t
        );
        // Without status facts (outside an `if`) they do not evaluate.
        for func in ["success", "failure", "cancelled"] {
            let err = run(&format!("{func}()"), &ctx()).expect_err(func);
            assert_eq!(
                err,
                EvalError::Function {
                    func,
                    message: STATUS_ONLY_IN_IF.into()
                }
            );
            assert_eq!(
                err.to_string(),
                format!(
                    "`{func}`: status functions can be used only in a step's or stage's `if` condition"
                )
            );
        }
    }

    #[test]
    fn status_calls_are_found_with_their_positions() {
        let e = parse("always() || !(failure() && contains(toJSON(cancelled()), 'x'))")
            .expect("parses");
        assert!(e.uses_status_function());
        assert_eq!(
            e.status_calls(),
            [
                (Func::Always, 0..8),
                (Func::Failure, 14..23),
                (Func::Cancelled, 43..54)
            ]
        );
        let plain = parse("contains(params.os, 'linux') && hashFiles('a') != ''").expect("parses");
        assert!(!plain.uses_status_function());
        assert!(plain.status_calls().is_empty());
        let t = parse_template("x ${{ success() }} y ${{ params.n }}").expect("parses");
        assert!(t.uses_status_function());
        assert_eq!(t.status_calls(), [(Func::Success, 6..15)]);
        assert!(
            !parse_template("${{ params.n }}")
                .expect("parses")
                .uses_status_function()
        );
    }

    #[test]
    fn new_functions_check_their_arity() {
        let err = parse("success(1)").expect_err("arity");
        assert_eq!(err.message, "`success` takes 0 argument(s), found 1");
        assert_eq!(err.range, 0..10);
        let err = parse("hashFiles()").expect_err("arity");
        assert_eq!(
            err.message,
            "`hashFiles` takes 1 to 16 argument(s), found 0"
        );
        assert_eq!(err.range, 0..11);
        let many = vec!["'a'"; MAX_HASH_PATTERNS + 1].join(", ");
        assert!(parse(&format!("hashFiles({many})")).is_err());
        let err = parse("hashfiles('a')").expect_err("case");
        assert_eq!(err.hint.as_deref(), Some("did you mean `hashFiles`?"));
        let err = parse("nope()").expect_err("unknown");
        assert!(
            err.hint
                .is_some_and(|h| h.contains("success, failure, always, cancelled, hashFiles")),
        );
    }

    #[test]
    fn hash_files_hashes_the_workspace_or_says_why_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.lock"), "1").expect("write");
        let mut c = MapContext {
            workspace: Some(dir.path().to_path_buf()),
            ..MapContext::default()
        };
        let run = |src: &str, c: &MapContext| evaluate(&parse(src).expect(src), c);
        let Ok(Value::String(first)) = run("hashFiles('*.lock', '!b.lock')", &c) else {
            panic!("hashFiles gives a string");
        };
        assert_eq!(first.len(), 64);
        assert_eq!(
            run("hashFiles('*.lock')", &c),
            Ok(Value::String(first.clone()))
        );
        assert_eq!(
            run("hashFiles('*.txt')", &c),
            Ok(Value::String(String::new()))
        );
        std::fs::write(dir.path().join("a.lock"), "2").expect("write");
        assert_ne!(run("hashFiles('*.lock')", &c), Ok(Value::String(first)));
        let err = run("hashFiles('../*.lock')", &c).expect_err("escapes");
        assert!(
            err.to_string()
                .starts_with("`hashFiles`: pattern `../*.lock` leaves the workspace"),
            "{err}"
        );
        let err = run("hashFiles('a', 1)", &c).expect_err("type");
        assert_eq!(
            err.to_string(),
            "`hashFiles`: pattern 2 must be a string, found a number"
        );
        c.workspace = None;
        let err = run("hashFiles('*.lock')", &c).expect_err("no workspace");
        assert_eq!(
            err,
            EvalError::Function {
                func: "hashFiles",
                message: HASH_FILES_NEEDS_WORKSPACE.into()
            }
        );
    }

    #[test]
    fn templates() {
        assert_eq!(
            interpolate(
                "img=${{ steps.build.outputs.image }} n=${{params.n}}",
                &ctx()
            ),
            Ok("img=app:1 n=3".into())
        );
        let e = parse_template("a ${{ params.x").err();
        assert_eq!(e.map(|e| e.range), Some(2..14));
    }
}
