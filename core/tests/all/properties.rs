//! Property tests: the expression language and the YAML front end are total.

use arkline::model::{self, expr};
use proptest::prelude::*;

/// Strings built from the expression language's own tokens, so the parser is
/// pushed past the lexer far more often than by random text.
fn expr_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("params.x".to_owned()),
        Just("params.n".to_owned()),
        Just("steps.a.outputs.k".to_owned()),
        Just("steps.a.state".to_owned()),
        Just("secrets.s".to_owned()),
        Just("event".to_owned()),
        Just("branch".to_owned()),
        Just("'main'".to_owned()),
        Just("\"x\\\"y\"".to_owned()),
        Just("1".to_owned()),
        Just("-2.5".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("==".to_owned()),
        Just("!=".to_owned()),
        Just("&&".to_owned()),
        Just("||".to_owned()),
        Just("!".to_owned()),
        Just("in".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(".".to_owned()),
        "[a-z]{1,4}",
        "\\PC{0,3}",
    ];
    prop::collection::vec(token, 0..24).prop_map(|t| t.join(" "))
}

fn context() -> expr::MapContext {
    let mut c = expr::MapContext::default();
    c.params
        .insert("x".into(), expr::Value::String("main".into()));
    c.params.insert("n".into(), expr::Value::Number(1.0));
    c.outputs
        .entry("a".into())
        .or_default()
        .insert("k".into(), "v".into());
    c.states.insert("a".into(), "Succeeded".into());
    c.branch = Some("main".into());
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn expression_parser_and_evaluator_never_panic(src in prop_oneof![expr_like(), "\\PC{0,64}"]) {
        let ctx = context();
        if let Ok(e) = expr::parse(&src) {
            let _ = expr::evaluate(&e, &ctx);
            let _ = expr::evaluate_condition(&e, &ctx);
        } else if let Err(err) = expr::parse(&src) {
            // Error ranges must point inside the text (they are used to underline it).
            prop_assert!(err.range.start <= err.range.end && err.range.end <= src.len());
            prop_assert!(src.is_char_boundary(err.range.start) && src.is_char_boundary(err.range.end));
        }
    }

    #[test]
    fn interpolation_never_panics(a in expr_like(), b in "\\PC{0,16}", close in any::<bool>()) {
        let template = format!("{b}${{{{ {a} {}", if close { "}} tail" } else { "" });
        let _ = expr::interpolate(&template, &context());
        if let Err(e) = expr::parse_template(&template) {
            prop_assert!(e.range.end <= template.len());
        }
    }

    #[test]
    fn the_yaml_front_end_never_panics(src in prop_oneof![
        "\\PC{0,200}",
        "(name: p\n|stages:\n|  - name: s\n|    steps:\n|      - name: a\n|        uses: [a-z@^0-9./]{0,8}\n|        with: \\{ x: \"\\$\\{\\{ [a-z. ]{0,12} \\}\\}\" \\}\n|  - [a-z:\\[\\]{}, -]{0,10}\n){0,12}",
    ]) {
        match model::parse_pipeline("fuzz.yaml", &src) {
            Ok(p) => {
                // Anything accepted must also survive a round trip.
                let yaml = model::to_pipeline_file(&p).expect("serializable");
                let again = model::parse_pipeline("again.yaml", &yaml);
                prop_assert_eq!(again.ok(), Some(p));
            }
            Err(d) => {
                prop_assert!(d.has_errors());
                let _ = d.render(&src);
            }
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(expr::parse(&deep).is_err());
    let bangs = format!("{}true", "!".repeat(10_000));
    assert!(expr::parse(&bangs).is_err());
    // Our own limit, well below the parser's.
    let yaml = format!("name: p\nstages: {}{}", "[".repeat(100), "]".repeat(100));
    let err = model::parse_pipeline("deep.yaml", &yaml).expect_err("too deep");
    assert!(
        err.0[0].message.contains("nesting deeper than"),
        "{}",
        err.0[0].message
    );
    // The parser's limit, for input far deeper still.
    let yaml = format!(
        "name: p\nstages: {}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let err = model::parse_pipeline("deep.yaml", &yaml).expect_err("too deep");
    assert_eq!(err.0[0].code, "yaml-syntax");
}
