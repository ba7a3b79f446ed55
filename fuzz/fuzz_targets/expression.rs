//! The expression language of `when.if` and `${{ … }}` interpolation
//! (`arkline::model::expr`): the lexer and parser on the whole input as an
//! expression, the template parser on it as a string with interpolations, and
//! evaluation of whatever parses against a context that has values for some
//! references (params of every type, secrets, step outputs and states, event,
//! branch, commit) and not for others. Nothing panics, overflows or hangs;
//! every reference's byte range lies inside the text on character boundaries
//! (diagnostics underline it); text without `${{` renders as itself.

#![no_main]

use arkline::model::expr::{self, MapContext, Value};
use libfuzzer_sys::fuzz_target;

fn context() -> MapContext {
    let mut c = MapContext::default();
    c.params.insert("env".into(), Value::String("prod".into()));
    c.params.insert("n".into(), Value::Number(3.0));
    c.params.insert("big".into(), Value::Number(1e300));
    c.params.insert("deploy".into(), Value::Bool(true));
    c.params.insert(
        "targets".into(),
        Value::List(vec![
            Value::String("a".into()),
            Value::Number(-0.5),
            Value::List(vec![Value::Bool(false)]),
        ]),
    );
    c.secrets.insert("token".into(), "s3cr3t".into());
    c.outputs
        .entry("build".into())
        .or_default()
        .insert("image".into(), "app:1".into());
    c.states.insert("build".into(), "Succeeded".into());
    c.event = Some("push".into());
    c.branch = Some("release/1.2".into());
    c.commit = Some("0123456789abcdef".into());
    c
}

fn check_range(src: &str, range: &std::ops::Range<usize>, what: &str) {
    assert!(
        range.start <= range.end && range.end <= src.len(),
        "{what} range {range:?} outside the text ({} bytes)",
        src.len()
    );
    assert!(
        src.is_char_boundary(range.start) && src.is_char_boundary(range.end),
        "{what} range {range:?} splits a character"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = context();
    let empty = MapContext::default();

    match expr::parse(src) {
        Ok(e) => {
            for (_, range) in e.references() {
                check_range(src, &range, "reference");
            }
            for c in [&ctx, &empty] {
                if let Ok(v) = expr::evaluate(&e, c) {
                    let _ = v.to_string();
                }
                let _ = expr::evaluate_condition(&e, c);
            }
        }
        Err(err) => {
            check_range(src, &err.range, "parse error");
            let _ = err.to_string();
        }
    }

    match expr::parse_template(src) {
        Ok(t) => {
            for (_, range) in t.references() {
                check_range(src, &range, "template reference");
            }
            let rendered = t.render(&ctx);
            if !src.contains("${{") {
                assert_eq!(rendered.as_deref(), Ok(src), "text without `${{{{` changed");
            }
            let _ = t.render(&empty);
            assert_eq!(expr::interpolate(src, &ctx).ok(), rendered.ok());
        }
        Err(err) => {
            check_range(src, &err.range, "template error");
            assert!(expr::interpolate(src, &ctx).is_err());
        }
    }
});
