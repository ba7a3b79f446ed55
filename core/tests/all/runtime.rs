//! What controllers use at run time: params of a run and `when` decisions.

use std::collections::BTreeMap;

use arkline::model::{
    self,
    expr::{MapContext, Value},
    pipeline::{ParamError, WhenError},
};
use serde_json::json;

fn spec() -> model::PipelineSpec {
    let src = "name: p\nparams:\n  - {name: target}\n  - {name: shards, type: number, default: 2}\n  - {name: deploy, type: bool, default: false}\nstages:\n  - name: s\n    when: {branch: [main, 'release/*'], event: {exclude: [pull_request]}, if: 'params.deploy'}\n    steps: [{name: a, uses: shell}]\n";
    model::parse_pipeline("p.yaml", src).expect("valid").spec
}

#[test]
fn params_get_defaults_and_are_checked() {
    let spec = spec();
    let given = BTreeMap::from([("target".to_owned(), json!("prod"))]);
    let params = spec.resolve_params(&given).expect("valid params");
    assert_eq!(params.get("shards"), Some(&json!(2)));
    assert_eq!(params.get("deploy"), Some(&json!(false)));
    let bad = BTreeMap::from([
        ("shards".to_owned(), json!("two")),
        ("colour".to_owned(), json!("red")),
    ]);
    let errors = spec.resolve_params(&bad).expect_err("three problems");
    assert_eq!(
        errors,
        [
            ParamError::Unknown("colour".into()),
            ParamError::Missing("target".into()),
            ParamError::Type {
                name: "shards".into(),
                expected: "number"
            },
        ]
    );
}

#[test]
fn when_checks_filters_then_the_expression() {
    let when = spec().stages[0].when.clone().expect("stage has a when");
    let ctx = |branch: &str, event: &str, deploy: bool| {
        let mut c = MapContext {
            branch: Some(branch.into()),
            event: Some(event.into()),
            ..MapContext::default()
        };
        c.params.insert("deploy".into(), Value::Bool(deploy));
        c
    };
    assert_eq!(when.evaluate(&ctx("main", "push", true)), Ok(true));
    assert_eq!(when.evaluate(&ctx("release/1.2", "push", false)), Ok(false));
    assert_eq!(when.evaluate(&ctx("feature/x", "push", true)), Ok(false));
    assert_eq!(when.evaluate(&ctx("main", "pull_request", true)), Ok(false));
    // A missing value is an error the controller reports, not a panic or a guess.
    let mut no_params = ctx("main", "push", true);
    no_params.params.clear();
    assert!(matches!(when.evaluate(&no_params), Err(WhenError::Eval(_))));
}

#[test]
fn a_step_sees_only_the_secrets_it_references() {
    let src = include_str!("../../../examples/pipelines/full.yaml");
    let spec = model::parse_pipeline("full.yaml", src).expect("valid").spec;
    let push = &spec.stages[2].steps[1];
    assert_eq!(push.name, "push");
    assert_eq!(
        push.referenced_secrets().into_iter().collect::<Vec<_>>(),
        ["registry-token"]
    );
    let compile = &spec.stages[0].steps[0];
    assert!(compile.referenced_secrets().is_empty());
}

#[test]
fn an_image_push_trigger_matches_repository_globs_hosts_and_tags() {
    use arkline::model::{Filter, Trigger};
    let t = |repository: &str, tags: &[&str]| Trigger::ImagePush {
        repository: repository.into(),
        tags: Filter {
            include: tags.iter().map(|s| (*s).to_owned()).collect(),
            exclude: vec!["*-rc*".into()],
        },
        own: false,
    };
    let app = t("team/app", &["v*"]);
    assert!(app.accepts_image("team/app", "", "v1.2"));
    assert!(!app.accepts_image("team/app", "", "v1.2-rc1"), "excluded");
    assert!(!app.accepts_image("team/app", "", "latest"));
    assert!(!app.accepts_image("team/other", "", "v1"));
    assert!(
        !app.accepts_image("team/app", "", ""),
        "a push by digest has no tag"
    );
    let hosted = t("registry.example.com/team/*", &[]);
    assert!(hosted.accepts_image("team/api", "registry.example.com", "x"));
    assert!(!hosted.accepts_image("team/api", "other.example.com", "x"));
    assert!(!hosted.accepts_image("team/api", "", "x"));
    assert!(!Trigger::Manual.accepts_image("team/app", "", "v1"));
}
