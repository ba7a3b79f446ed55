//! Static types of expressions, for the type errors validation can report
//! before anything runs: an operator or function given a value it cannot use,
//! a condition that is not a boolean, two values compared that can never be
//! equal. Only what is known is checked: a matrix value or a `fromJSON`
//! result may be anything, and never causes an error here.

use std::ops::Range;

use crate::model::expr::{BinOp, Expr, Func, Reference, Value};

/// A value's type as far as validation knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    String,
    Number,
    Bool,
    List,
    /// Not known before the run.
    Any,
}

impl Ty {
    fn of(v: &Value) -> Self {
        match v {
            Value::String(_) => Ty::String,
            Value::Number(_) => Ty::Number,
            Value::Bool(_) => Ty::Bool,
            Value::List(_) => Ty::List,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ty::String => "string",
            Ty::Number => "number",
            Ty::Bool => "boolean",
            Ty::List => "list",
            Ty::Any => "value",
        }
    }

    fn is(self, want: Ty) -> bool {
        self == Ty::Any || self == want
    }
}

/// A type error with the byte range of the offending part, when it has one
/// (literals carry no range: the caller points at the whole expression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeError {
    pub(crate) message: String,
    pub(crate) range: Option<Range<usize>>,
}

fn span(e: &Expr) -> Option<Range<usize>> {
    fn merge(a: Option<Range<usize>>, b: Option<Range<usize>>) -> Option<Range<usize>> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.start.min(b.start)..a.end.max(b.end)),
            (a, b) => a.or(b),
        }
    }
    match e {
        Expr::Literal(_) => None,
        Expr::Ref(_, r) | Expr::Call(_, _, r) => Some(r.clone()),
        Expr::Not(inner) => span(inner),
        Expr::Binary(_, a, b) => merge(span(a), span(b)),
        Expr::List(items) => items.iter().map(span).fold(None, merge),
    }
}

/// The type of `e`, pushing every type error found on the way. `lookup`
/// gives the type of each reference.
pub(crate) fn check(
    e: &Expr,
    lookup: &dyn Fn(&Reference) -> Ty,
    errors: &mut Vec<TypeError>,
) -> Ty {
    fn wrong(errors: &mut Vec<TypeError>, e: &Expr, message: String) {
        errors.push(TypeError {
            message,
            range: span(e),
        });
    }
    match e {
        Expr::Literal(v) => Ty::of(v),
        Expr::List(items) => {
            for item in items {
                check(item, lookup, errors);
            }
            Ty::List
        }
        Expr::Ref(r, _) => lookup(r),
        Expr::Not(inner) => {
            let t = check(inner, lookup, errors);
            if !t.is(Ty::Bool) {
                wrong(
                    errors,
                    inner,
                    format!("`!` needs true or false, found a {}", t.name()),
                );
            }
            Ty::Bool
        }
        Expr::Binary(op, a, b) => {
            let (ta, tb) = (check(a, lookup, errors), check(b, lookup, errors));
            match op {
                BinOp::And | BinOp::Or => {
                    let sym = if *op == BinOp::And { "&&" } else { "||" };
                    for (side, t) in [(a, ta), (b, tb)] {
                        if !t.is(Ty::Bool) {
                            wrong(
                                errors,
                                side,
                                format!(
                                    "`{sym}` needs true or false on both sides, found a {}",
                                    t.name()
                                ),
                            );
                        }
                    }
                }
                BinOp::Eq | BinOp::Ne => {
                    if ta != Ty::Any && tb != Ty::Any && ta != tb {
                        wrong(
                            errors,
                            e,
                            format!(
                                "`{}` compares a {} with a {}, which are never equal",
                                if *op == BinOp::Eq { "==" } else { "!=" },
                                ta.name(),
                                tb.name()
                            ),
                        );
                    }
                }
                BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                    let sym = match op {
                        BinOp::Lt => "<",
                        BinOp::Le => "<=",
                        BinOp::Gt => ">",
                        _ => ">=",
                    };
                    let orderable = |t: Ty| matches!(t, Ty::Number | Ty::String | Ty::Any);
                    let mismatch = ta != Ty::Any && tb != Ty::Any && ta != tb;
                    if !orderable(ta) || !orderable(tb) || mismatch {
                        wrong(
                            errors,
                            e,
                            format!(
                                "`{sym}` compares two numbers or two strings, found a {} and a {}",
                                ta.name(),
                                tb.name()
                            ),
                        );
                    }
                }
                BinOp::In => {
                    if !matches!(tb, Ty::List | Ty::String | Ty::Any) {
                        wrong(
                            errors,
                            b,
                            format!("`in` looks into a list or a string, found a {}", tb.name()),
                        );
                    }
                }
            }
            Ty::Bool
        }
        Expr::Call(func, args, _) => {
            let types: Vec<Ty> = args.iter().map(|a| check(a, lookup, errors)).collect();
            let name = func.name();
            let mut need = |i: usize, want: Ty, what: &str| {
                if let (Some(arg), Some(t)) = (args.get(i), types.get(i))
                    && !t.is(want)
                {
                    errors.push(TypeError {
                        message: format!(
                            "`{name}`: {what} must be a {}, found a {}",
                            want.name(),
                            t.name()
                        ),
                        range: span(arg).or_else(|| match e {
                            Expr::Call(_, _, r) => Some(r.clone()),
                            _ => None,
                        }),
                    });
                }
            };
            match func {
                Func::Contains => {
                    if !matches!(types[0], Ty::List | Ty::String | Ty::Any) {
                        need(0, Ty::String, "the first argument");
                    }
                    Ty::Bool
                }
                Func::StartsWith | Func::EndsWith => {
                    need(0, Ty::String, "the first argument");
                    need(1, Ty::String, "the second argument");
                    Ty::Bool
                }
                Func::Format => {
                    need(0, Ty::String, "the template");
                    Ty::String
                }
                Func::Join => {
                    if types.len() > 1 {
                        need(1, Ty::String, "the separator");
                    }
                    Ty::String
                }
                Func::ToJson => Ty::String,
                Func::FromJson => {
                    need(0, Ty::String, "the argument");
                    Ty::Any
                }
                Func::HashFiles => {
                    for i in 0..types.len() {
                        need(i, Ty::String, "a pattern");
                    }
                    Ty::String
                }
                Func::Success | Func::Failure | Func::Always | Func::Cancelled => Ty::Bool,
            }
        }
    }
}

/// Type errors of a condition: its parts', and the whole must be a boolean.
pub(crate) fn check_condition(e: &Expr, lookup: &dyn Fn(&Reference) -> Ty) -> Vec<TypeError> {
    let mut errors = Vec::new();
    let t = check(e, lookup, &mut errors);
    if !t.is(Ty::Bool) {
        errors.push(TypeError {
            message: format!("a condition must be true or false, found a {}", t.name()),
            range: span(e),
        });
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::expr::parse;

    fn lookup(r: &Reference) -> Ty {
        match r {
            Reference::Param(n) if n == "count" => Ty::Number,
            Reference::Param(n) if n == "deploy" => Ty::Bool,
            Reference::Param(n) if n == "tags" => Ty::List,
            Reference::Matrix(_) => Ty::Any,
            _ => Ty::String,
        }
    }

    fn errors(src: &str) -> Vec<String> {
        let e = parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        check_condition(&e, &lookup)
            .into_iter()
            .map(|e| e.message)
            .collect()
    }

    #[test]
    fn known_types_are_checked_and_unknown_ones_pass() {
        assert!(errors("params.count > 3 && params.deploy").is_empty());
        assert!(errors("branch == 'main' || contains(params.tags, 'x')").is_empty());
        assert!(errors("matrix.v == 1 && matrix.os < 'm'").is_empty());
        assert!(errors("fromJSON(params.x) && success()").is_empty());
        assert_eq!(
            errors("params.count == '3'"),
            ["`==` compares a number with a string, which are never equal"]
        );
        assert_eq!(
            errors("params.count < branch"),
            ["`<` compares two numbers or two strings, found a number and a string"]
        );
        assert_eq!(
            errors("params.deploy && branch"),
            ["`&&` needs true or false on both sides, found a string"]
        );
        assert_eq!(
            errors("branch"),
            ["a condition must be true or false, found a string"]
        );
        assert_eq!(
            errors("startsWith(params.count, 'v')"),
            ["`startsWith`: the first argument must be a string, found a number"]
        );
        assert_eq!(
            errors("!params.count"),
            ["`!` needs true or false, found a number"]
        );
        assert_eq!(
            errors("'a' in params.count"),
            ["`in` looks into a list or a string, found a number"]
        );
    }

    #[test]
    fn errors_point_at_the_part() {
        let e = parse("branch == 'main' && params.count").expect("parses");
        let errs = check_condition(&e, &lookup);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].range, Some(20..32));
    }
}
