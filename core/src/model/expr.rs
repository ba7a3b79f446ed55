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
//! reference := "params." NAME | "secrets." NAME | "steps." NAME ".outputs." NAME
//!            | "steps." NAME ".state" | "event" | "branch" | "commit"
//! ```
//! Functions (GitHub Actions' names): `contains(haystack, needle)` (substring
//! or list member), `startsWith(s, prefix)`, `endsWith(s, suffix)`,
//! `format('{0}-{1}', a, b)` (`{{`/`}}` for braces), `join(list, sep = ',')`,
//! `toJSON(value)`, `fromJSON(text)`; their names and arities are checked when
//! parsing. `<`, `<=`, `>`, `>=` compare two numbers or two strings.
//! Strings are `'…'` or `"…"` with `\` escapes. Names may contain `-` (step names
//! often do). The language is total: the parser returns positioned errors,
//! nesting is bounded, and evaluation returns [`EvalError`] for a missing
//! reference or a type mismatch; nothing panics.
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
}

impl Func {
    const ALL: [(&'static str, Func); 7] = [
        ("contains", Func::Contains),
        ("startsWith", Func::StartsWith),
        ("endsWith", Func::EndsWith),
        ("format", Func::Format),
        ("join", Func::Join),
        ("toJSON", Func::ToJson),
        ("fromJSON", Func::FromJson),
    ];

    /// The function's name in expressions.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// How many arguments it takes, at least and at most.
    fn arity(self) -> (usize, usize) {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith => (2, 2),
            Func::Format => (1, 32),
            Func::Join => (1, 2),
            Func::ToJson | Func::FromJson => (1, 1),
        }
    }
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
    /// `steps.<step>.outputs.<key>`
    StepOutput {
        /// Step name.
        step: String,
        /// Output key.
        key: String,
    },
    /// `steps.<step>.state`
    StepState(String),
    /// `event`
    Event,
    /// `branch`
    Branch,
    /// `commit`
    Commit,
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
            Self::StepOutput { step, key } => write!(f, "steps.{step}.outputs.{key}"),
            Self::StepState(s) => write!(f, "steps.{s}.state"),
            Self::Event => f.write_str("event"),
            Self::Branch => f.write_str("branch"),
            Self::Commit => f.write_str("commit"),
        }
    }
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
                None => e.hint(
                    "functions are contains, startsWith, endsWith, format, join, toJSON, fromJSON",
                ),
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
        let mut path = vec![first];
        let mut end = range.end;
        while self.eat_op(".") {
            match self.toks.get(self.pos).cloned() {
                Some((Tok::Ident(seg), r)) => {
                    path.push(seg);
                    end = r.end;
                    self.pos += 1;
                }
                _ => return Err(ExprError::new("expected a name after `.`", self.range())),
            }
        }
        let whole = range.start..end;
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let r = match p.as_slice() {
            ["params", name] => Reference::Param((*name).to_owned()),
            ["secrets", name] => Reference::Secret((*name).to_owned()),
            ["steps", step, "outputs", key] => Reference::StepOutput {
                step: (*step).to_owned(),
                key: (*key).to_owned(),
            },
            ["steps", step, "state"] => Reference::StepState((*step).to_owned()),
            ["event"] => Reference::Event,
            ["branch"] => Reference::Branch,
            ["commit"] => Reference::Commit,
            ["steps", step, ..] => {
                return Err(ExprError::new(
                    format!("`{}` is not a reference", path.join(".")),
                    whole,
                )
                .hint(format!(
                    "use `steps.{step}.outputs.<key>` or `steps.{step}.state`"
                )));
            }
            [root @ ("params" | "secrets"), ..] => {
                return Err(ExprError::new(
                    format!("`{}` is not a reference", path.join(".")),
                    whole,
                )
                .hint(format!("use `{root}.<name>`")));
            }
            [root, ..] => {
                const ROOTS: [&str; 6] =
                    ["params", "secrets", "steps", "event", "branch", "commit"];
                let e = ExprError::new(format!("unknown name `{root}`"), range);
                return Err(match did_you_mean(root, ROOTS) {
                    Some(s) => e.hint(format!("did you mean `{s}`?")),
                    None => e.hint("references start with `params.`, `steps.`, `secrets.`, or are `event`, `branch`, `commit`; quote string literals"),
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
}

/// What an expression reads its references from.
pub trait EvalContext {
    /// The value of a reference, `None` when it is not set.
    fn lookup(&self, reference: &Reference) -> Option<Value>;
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

/// Calls a function on evaluated arguments.
fn call(func: Func, args: Vec<Value>) -> Result<Value, EvalError> {
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
