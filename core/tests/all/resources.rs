//! Resource kinds: envelopes, the `Resource` contract and status helpers.

use std::collections::BTreeMap;

use arkline::model::{self, resources::set_condition, *};

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta::new("eng", name)
}

fn round_trip<
    R: Resource + PartialEq + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
>(
    r: &R,
) {
    let dynamic = r.to_dynamic().expect("to dynamic");
    assert_eq!(dynamic.api_version, API_VERSION);
    assert_eq!(dynamic.kind, R::KIND);
    // The stored JSON of the dynamic form decodes straight to the same object.
    let stored = serde_json::to_vec(&dynamic).expect("stored json");
    assert_eq!(&R::from_json(&stored).expect("from stored json"), r);
    assert_eq!(&R::from_dynamic(dynamic).expect("from dynamic"), r);
    let json = serde_json::to_value(r).expect("json");
    assert_eq!(
        json["apiVersion"], API_VERSION,
        "top-level field is camelCase"
    );
    assert_eq!(&serde_json::from_value::<R>(json).expect("from json"), r);
}

fn execution() -> PipelineExecution {
    let pipeline = model::parse_pipeline(
        "p.yaml",
        "name: p\nstages: [{name: s, steps: [{name: a, uses: shell@1}]}]\n",
    )
    .expect("valid");
    let mut exec = PipelineExecution::new(
        meta("p-1"),
        PipelineExecutionSpec {
            pipeline: "p".into(),
            pipeline_spec: pipeline.spec,
            run: 1,
            trigger: TriggerKind::Webhook,
            params: BTreeMap::from([("target".into(), serde_json::json!("prod"))]),
            event: "push".into(),
            branch: "main".into(),
            commit: "abc123".into(),
            abort: false,
            concurrency: Some("p-main".into()),
            superseded_by: None,
            approvals: BTreeMap::new(),
            origin: None,
            untrusted: false,
            image: Some(arkline::model::ImagePush {
                image: "registry.example.com/team/app".into(),
                digest: "sha256:0123".into(),
                tag: "1.0".into(),
            }),
        },
    );
    exec.status.phase = ExecutionPhase::Running;
    exec.status
        .resolved
        .insert("shell@1".into(), "shell@1.2.0".into());
    exec.status.stages.push(StageStatus {
        name: "s".into(),
        phase: StepPhase::Running,
        steps: vec![StepStatus {
            name: "a".into(),
            phase: StepPhase::Skipped,
            attempts: 2,
            reason: "when".into(),
            ..StepStatus::default()
        }],
        ..StageStatus::default()
    });
    exec
}

#[test]
fn every_kind_round_trips_through_dynamic_and_json() {
    let mut setting = PipelineSetting::new(meta("settings"), PipelineSettingSpec::default());
    setting.spec.executor_quota = 4;
    setting.spec.default_step_limits.timeout = Some("10m".parse().expect("duration"));
    round_trip(&setting);
    round_trip(&execution());
    let mut secret = Secret::new(meta("creds"), SecretSpec::default());
    secret
        .spec
        .data
        .insert("token".into(), Ciphertext("c2VjcmV0".into()));
    round_trip(&secret);
    let deployment = BizDeployment::new(
        meta("bizes"),
        BizDeploymentSpec {
            bizes: vec![DesiredBiz {
                name: "shell".into(),
                versions: vec!["1.2.0".into(), "1.3.0".into()],
                active: "1.3.0".into(),
                grants: vec!["process=sh".into()],
                digests: [("1.3.0".to_owned(), "ab".repeat(32))].into(),
            }],
        },
    );
    round_trip(&deployment);
}

#[test]
fn from_dynamic_refuses_another_kind_and_accepts_a_null_status() {
    let exec = execution();
    let mut dynamic = exec.to_dynamic().expect("to dynamic");
    dynamic.kind = "Secret".into();
    let err = PipelineExecution::from_dynamic(dynamic.clone()).expect_err("wrong kind");
    assert!(
        err.to_string()
            .contains("expected kind `PipelineExecution`")
    );
    dynamic.kind = "PipelineExecution".into();
    dynamic.status = serde_json::Value::Null;
    let stored = serde_json::to_vec(&dynamic).expect("json");
    let fresh = PipelineExecution::from_dynamic(dynamic).expect("null status");
    assert_eq!(fresh.status, PipelineExecutionStatus::default());
    // Decoding the stored JSON directly agrees, and refuses what it refuses.
    assert_eq!(
        PipelineExecution::from_json(&stored).expect("null status"),
        fresh
    );
    let other_kind = String::from_utf8(stored)
        .expect("utf-8")
        .replace("\"kind\":\"PipelineExecution\"", "\"kind\":\"Secret\"");
    let err = PipelineExecution::from_json(other_kind.as_bytes()).expect_err("wrong kind");
    assert!(
        err.to_string()
            .contains("expected kind `PipelineExecution`"),
        "{err}"
    );
}

#[test]
fn phases_and_states_serialize_by_name() {
    let json = serde_json::to_value(execution()).expect("json");
    assert_eq!(json["status"]["phase"], "Running");
    assert_eq!(json["status"]["stages"][0]["steps"][0]["phase"], "Skipped");
    assert_eq!(json["spec"]["trigger"], "webhook");
    assert!(ExecutionPhase::Aborted.is_finished() && !ExecutionPhase::Queued.is_finished());
}

#[test]
fn quota_zero_or_negative_is_unlimited() {
    let mut spec = PipelineSettingSpec::default();
    assert_eq!(spec.quota(), None);
    spec.executor_quota = -1;
    assert_eq!(spec.quota(), None);
    spec.executor_quota = 3;
    assert_eq!(spec.quota(), Some(3));
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let t0 = chrono::DateTime::from_timestamp(1_000, 0).expect("time");
    let t1 = chrono::DateTime::from_timestamp(2_000, 0).expect("time");
    let cond = |status, at| Condition {
        kind: ConditionType::Resolved,
        status,
        reason: "UnsatisfiedUses".into(),
        message: "no installed biz satisfies `rust/cargo@^2`".into(),
        last_transition: Some(at),
    };
    let mut conditions = Vec::new();
    set_condition(&mut conditions, cond(ConditionStatus::False, t0));
    set_condition(&mut conditions, cond(ConditionStatus::False, t1));
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0].last_transition, Some(t0));
    set_condition(&mut conditions, cond(ConditionStatus::True, t1));
    assert_eq!(conditions[0].last_transition, Some(t1));
}

#[test]
fn recent_nodes_are_distinct_and_most_recent_first() {
    let mut status = PipelineStatus::default();
    for node in ["a", "b", "a", "c", "d"] {
        status.record_node(node, 3);
    }
    assert_eq!(status.recent_nodes, ["d", "c", "a"]);
}

#[test]
fn secret_ciphertext_is_not_printed_by_debug() {
    let text = format!("{:?}", Ciphertext("c2VjcmV0".into()));
    assert!(!text.contains("c2VjcmV0"));
}
