//! Several engines in one container, bizes as desired state: grants per engine,
//! no collisions between engines, fair step slots, hot switch and uninstall while
//! executions run, and a restart that comes back to the same bizes.

use std::time::Duration;

use arkline::ark::{Ark, write_ark};
use arkline::model::{ExecutionPhase, PipelineExecution};
use arkline::runtime::UninstallMode;
use arkline::{Container, Engine, TriggerRequest};

const LIMIT: Duration = Duration::from_secs(300);

fn faults_bytes() -> Vec<u8> {
    std::fs::read(arkline_testkit::plugin("faults")).expect("the faults archive reads")
}

/// The faults component repackaged as another version.
fn faults_version(version: &str) -> Vec<u8> {
    let ark = Ark::from_bytes(&faults_bytes()).expect("reads");
    let mut manifest = ark.manifest.clone();
    manifest.version = semver::Version::parse(version).expect("version");
    write_ark(manifest, &ark.component, &ark.files)
        .expect("rewrites")
        .0
}

async fn wait(engine: &Engine, name: &str) -> PipelineExecution {
    match tokio::time::timeout(LIMIT, engine.wait(name)).await {
        Ok(done) => done.expect("wait"),
        Err(_) => panic!("{name} did not finish: {:#?}", engine.execution(name).await),
    }
}

async fn run(engine: &Engine, yaml: &str) -> PipelineExecution {
    let p = engine
        .apply_pipeline_yaml("t.yaml", yaml)
        .await
        .unwrap_or_else(|e| panic!("applies: {e}"));
    let exec = engine
        .trigger(&p.metadata.name, TriggerRequest::manual())
        .await
        .expect("trigger");
    wait(engine, &exec.metadata.name).await
}

const CALL_PROCESS: &str = "name: probe\nstages:\n  - name: s\n    steps:\n      - name: call\n        uses: faults/call-capability\n        with: { capability: process }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_per_engine_and_engines_do_not_collide() {
    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("builds");
    let a = container.engine("team-a").await.expect("engine a");
    let b = container.engine("team-b").await.expect("engine b");
    a.deploy_biz(&faults_bytes(), &["process=true".into()], true)
        .await
        .expect("deploys in a");
    b.deploy_biz(&faults_bytes(), &[], true)
        .await
        .expect("deploys in b");
    let in_a = run(&a, CALL_PROCESS).await;
    let in_b = run(&b, CALL_PROCESS).await;
    let result = |e: &PipelineExecution| e.status.outputs["call"].clone();
    assert_eq!(result(&in_a)["result"], "ok", "{:#?}", result(&in_a));
    assert_eq!(result(&in_b)["kind"], "denied", "{:#?}", result(&in_b));
    assert!(
        result(&in_b)["error"].contains("engine `team-b`"),
        "{:#?}",
        result(&in_b)
    );
    // The same pipeline name in both engines: separate objects and run numbers.
    assert_eq!(in_a.metadata.name, "probe-1");
    assert_eq!(in_b.metadata.name, "probe-1");
    assert_eq!(a.executions(None).await.expect("list").len(), 1);
    assert_eq!(b.executions(None).await.expect("list").len(), 1);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_comes_back_to_the_deployed_bizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let container = Container::builder()
            .data_dir(dir.path())
            .build()
            .expect("builds");
        let a = container.engine("team-a").await.expect("engine");
        a.deploy_biz(&faults_bytes(), &["process=true".into()], true)
            .await
            .expect("deploys 0.1");
        a.deploy_biz(&faults_version("9.0.0"), &["process=true".into()], false)
            .await
            .expect("deploys 9.0 inactive");
        container.shutdown().await;
    }
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("builds again");
    let a = container.engine("team-a").await.expect("engine");
    // The reconciler installs them again; the grants came back too.
    let exec = run(&a, CALL_PROCESS).await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    assert_eq!(exec.status.outputs["call"]["result"], "ok");
    let resolved: Vec<&String> = exec.status.resolved.values().collect();
    assert!(
        resolved.iter().all(|v| !v.ends_with("9.0.0")),
        "the inactive version stayed inactive: {resolved:?}"
    );
    let mut versions: Vec<String> = a.bizes().iter().map(|b| b.version.to_string()).collect();
    versions.sort();
    assert_eq!(versions.len(), 2, "{versions:?}");
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_switch_and_uninstall_while_executions_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("builds");
    let a = container.engine("team-a").await.expect("engine");
    let v1 = a
        .deploy_biz(&faults_version("1.0.0"), &[], true)
        .await
        .expect("v1");
    a.apply_pipeline_yaml(
        "t.yaml",
        "name: slow\nstages:\n  - name: s\n    steps:\n      - name: nap\n        uses: faults/sleep@^1\n        with: { ms: 1500 }\n",
    )
    .await
    .expect("applies");
    let first = a
        .trigger("slow", TriggerRequest::manual())
        .await
        .expect("t");
    let mut states = a
        .watch_execution(&first.metadata.name)
        .await
        .expect("watch");
    use futures::StreamExt;
    while let Some(s) = states.next().await {
        if s.expect("state")
            .status
            .resolved
            .values()
            .any(|v| v == "faults@1.0.0")
        {
            break;
        }
    }
    // v2 goes in and is activated while the first execution holds v1.
    a.deploy_biz(&faults_version("1.1.0"), &[], true)
        .await
        .expect("v2");
    let second = a
        .trigger("slow", TriggerRequest::manual())
        .await
        .expect("t");
    // Uninstalling v1 waits for the first execution.
    let uninstall = {
        let a = a.clone();
        let v = v1.version.clone();
        tokio::spawn(async move { a.uninstall("faults", &v, UninstallMode::Wait).await })
    };
    let first = wait(&a, &first.metadata.name).await;
    let second = wait(&a, &second.metadata.name).await;
    uninstall.await.expect("join").expect("uninstalled");
    assert_eq!(
        first.status.phase,
        ExecutionPhase::Succeeded,
        "in-flight finished on its lease: {:#?}",
        first.status
    );
    assert_eq!(
        first.status.resolved.values().next().map(String::as_str),
        Some("faults@1.0.0")
    );
    assert_eq!(
        second.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        second.status
    );
    assert_eq!(
        second.status.resolved.values().next().map(String::as_str),
        Some("faults@1.1.0")
    );
    let versions: Vec<String> = a.bizes().iter().map(|b| b.version.to_string()).collect();
    assert_eq!(versions, ["1.1.0"]);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_in_one_engine_does_not_starve_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .runtime_config(arkline::runtime::RuntimeConfig::default().max_instances(2))
        .build()
        .expect("builds");
    let a = container.engine("team-a").await.expect("engine a");
    let b = container.engine("team-b").await.expect("engine b");
    a.deploy_biz(&faults_bytes(), &[], true).await.expect("a");
    b.deploy_biz(&faults_bytes(), &[], true).await.expect("b");
    let yaml = "name: work\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/sleep\n        with: { ms: 200 }\n";
    a.apply_pipeline_yaml("t.yaml", yaml)
        .await
        .expect("a applies");
    b.apply_pipeline_yaml("t.yaml", yaml)
        .await
        .expect("b applies");
    const FLOOD: usize = 1000;
    for _ in 0..FLOOD {
        a.trigger("work", TriggerRequest::manual())
            .await
            .expect("a trigger");
    }
    let single = b
        .trigger("work", TriggerRequest::manual())
        .await
        .expect("b trigger");
    let single = wait(&b, &single.metadata.name).await;
    assert_eq!(single.status.phase, ExecutionPhase::Succeeded);
    let finished_in_a = a
        .executions(Some("work"))
        .await
        .expect("list")
        .iter()
        .filter(|e| e.status.phase.is_finished())
        .count();
    assert!(
        finished_in_a < FLOOD / 2,
        "engine b's one execution waited for {finished_in_a} of engine a's {FLOOD}"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engines_watches_are_never_handed_another_engines_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The container's store, kept to read its counters.
    let store = std::sync::Arc::new(
        arkline::store::RedbStore::open(dir.path().join("store")).expect("opens"),
    );
    let container = Container::builder()
        .data_dir(dir.path())
        .store(store.clone())
        .build()
        .expect("builds");
    let a = container.engine("team-a").await.expect("engine a");
    let b = container.engine("team-b").await.expect("engine b");
    a.deploy_biz(&faults_bytes(), &[], true).await.expect("a");
    b.deploy_biz(&faults_bytes(), &[], true).await.expect("b");
    let yaml = "name: up\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/upper\n        with: { text: hi }\n";
    for _ in 0..10 {
        assert_eq!(run(&a, yaml).await.status.phase, ExecutionPhase::Succeeded);
    }
    let kind = "PipelineExecution";
    assert!(
        store.delivered_events(kind, Some("team-a")) >= 10,
        "engine a's controllers and admission follow its executions"
    );
    assert_eq!(
        store.delivered_events(kind, Some("team-b")),
        0,
        "engine b's watches were handed engine a's events"
    );
    // Its own execution reaches it.
    assert_eq!(run(&b, yaml).await.status.phase, ExecutionPhase::Succeeded);
    assert!(store.delivered_events(kind, Some("team-b")) > 0);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_restored_and_one_can_be_removed_without_disturbing_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = "name: work\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/sleep\n        with: { ms: 1000 }\n";
    {
        let container = Container::builder()
            .data_dir(dir.path())
            .build()
            .expect("builds");
        for name in ["team-a", "team-b"] {
            let e = container.engine(name).await.expect("engine");
            e.deploy_biz(&faults_bytes(), &[], true)
                .await
                .expect("deploys");
            e.apply_pipeline_yaml("t.yaml", yaml)
                .await
                .expect("applies");
        }
        container.shutdown().await;
    }
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("builds again");
    let mut names: Vec<String> = container
        .restore()
        .await
        .expect("restores")
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["team-a", "team-b"]);
    let a = container.engine("team-a").await.expect("a");
    let b = container.engine("team-b").await.expect("b");
    let in_a = a
        .trigger("work", TriggerRequest::manual())
        .await
        .expect("a");
    let in_b = b
        .trigger("work", TriggerRequest::manual())
        .await
        .expect("b");
    assert!(container.remove_engine("team-a").await.expect("removes"));
    assert!(!container.remove_engine("team-a").await.expect("idempotent"));
    let in_b = wait(&b, &in_b.metadata.name).await;
    assert_eq!(
        in_b.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        in_b.status
    );
    assert!(
        a.execution(&in_a.metadata.name)
            .await
            .expect("get")
            .is_none()
    );
    assert!(!dir.path().join("workspaces/team-a").exists());
    // After a restart only team-b comes back.
    container.shutdown().await;
    drop((a, b, container));
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("builds a third time");
    let names: Vec<String> = container
        .restore()
        .await
        .expect("restores")
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    assert_eq!(names, ["team-b"]);
    container.shutdown().await;
}

mod archive {
    use std::collections::BTreeMap;

    use arkline::container::archive::{
        BizRef, CONTAINER_FORMAT_VERSION, ContainerArchive, ContainerManifest, EngineSpec,
        pipeline_path, write_container,
    };
    use arkline::model::{ExecutionPhase, PipelineSettingSpec};
    use arkline::{Container, TriggerRequest};
    use semver::Version;

    use super::{faults_bytes, wait};

    fn engine(name: &str, grants: &[&str], quota: i64) -> EngineSpec {
        EngineSpec {
            name: name.into(),
            trusted_keys: vec![],
            require_signed: false,
            bizes: vec![BizRef {
                name: "faults".into(),
                version: Version::new(0, 1, 0),
                grants: grants.iter().map(|g| (*g).to_owned()).collect(),
                active: true,
            }],
            pipelines: vec![],
            settings: PipelineSettingSpec {
                executor_quota: quota,
                ..PipelineSettingSpec::default()
            },
        }
    }

    fn container_bytes(faults: Vec<u8>) -> Vec<u8> {
        let manifest = ContainerManifest {
            format_version: CONTAINER_FORMAT_VERSION,
            name: "ci".into(),
            version: Version::new(1, 0, 0),
            engines: vec![
                engine("team-a", &["process=true"], 2),
                engine("team-b", &[], 1),
            ],
            shared_bizes: vec![],
            files: vec![],
        };
        let bizes = BTreeMap::from([(("faults".to_owned(), Version::new(0, 1, 0)), faults)]);
        let mut pipelines = BTreeMap::new();
        for team in ["team-a", "team-b"] {
            pipelines.insert(
                (team.to_owned(), pipeline_path(team, "probe.yaml")),
                super::CALL_PROCESS.to_owned(),
            );
        }
        write_container(manifest, &bizes, &pipelines)
            .expect("writes")
            .0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_container_archive_deploys_its_engines_and_a_bad_one_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let container = Container::builder()
            .data_dir(dir.path())
            .build()
            .expect("builds");
        // A component that does not compile (a valid archive around garbage)
        // is refused before any engine exists.
        let good = faults_bytes();
        let broken = {
            let ark = arkline::ark::Ark::from_bytes(&good).expect("reads");
            let mut component = ark.component.clone();
            component.truncate(component.len() / 2);
            let mut manifest = ark.manifest.clone();
            manifest.component.sha256 = String::new();
            arkline::ark::write_ark(manifest, &component, &ark.files)
                .expect("rewrites")
                .0
        };
        let bad = ContainerArchive::from_bytes(&container_bytes(broken)).expect("reads");
        let refused = container.deploy_archive(&bad).await;
        assert!(refused.is_err(), "a broken component deployed");
        assert!(
            container.engines().is_empty(),
            "a bad archive created engines"
        );

        let archive = ContainerArchive::from_bytes(&container_bytes(good)).expect("reads");
        let engines = container.deploy_archive(&archive).await.expect("deploys");
        assert_eq!(engines.len(), 2);
        let (a, b) = (&engines[0], &engines[1]);
        assert_eq!(a.settings().await.expect("settings").executor_quota, 2);
        assert_eq!(b.settings().await.expect("settings").executor_quota, 1);
        let in_a = a
            .trigger("probe", TriggerRequest::manual())
            .await
            .expect("a");
        let in_b = b
            .trigger("probe", TriggerRequest::manual())
            .await
            .expect("b");
        let in_a = wait(a, &in_a.metadata.name).await;
        let in_b = wait(b, &in_b.metadata.name).await;
        assert_eq!(in_a.status.phase, ExecutionPhase::Succeeded);
        assert_eq!(in_a.status.outputs["call"]["result"], "ok");
        assert_eq!(in_b.status.outputs["call"]["kind"], "denied");
        // Deploying it again converges (nothing duplicated, nothing broken).
        container.deploy_archive(&archive).await.expect("redeploys");
        assert_eq!(a.bizes().len(), 1);
        container.shutdown().await;
    }
}

/// The faults component with a custom section appended: the same `name@version`,
/// other bytes (a valid component all the same).
fn faults_other_component() -> Vec<u8> {
    let ark = Ark::from_bytes(&faults_bytes()).expect("reads");
    let mut component = ark.component.to_vec();
    // Custom section: id 0, size 3, name "x" (length 1), payload "y".
    component.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'y']);
    write_ark(ark.manifest.clone(), &component, &ark.files)
        .expect("rewrites")
        .0
}

/// Each way a deploy fails is its own `DeployError`, with the engine named, and
/// nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_failures_are_typed_and_change_nothing() {
    use arkline::{DeployError, EngineError};
    let data = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container");
    let engine = container.engine("team-a").await.expect("engine");
    let info = engine
        .deploy_biz(&faults_bytes(), &[], true)
        .await
        .expect("deploys");
    let before = engine.bizes();

    let deploy_error = |e: EngineError| match e {
        EngineError::Deploy { engine, error } => {
            assert_eq!(engine, "team-a");
            *error
        }
        other => panic!("expected a deploy error, got {other:?}"),
    };
    let archive = deploy_error(
        engine
            .deploy_biz(b"not a zip", &[], true)
            .await
            .expect_err("garbage"),
    );
    assert!(matches!(archive, DeployError::Archive(_)), "{archive:?}");

    let grant = deploy_error(
        engine
            .deploy_biz(&faults_version("9.1.0"), &["teleport=x".to_owned()], true)
            .await
            .expect_err("bad grant"),
    );
    match &grant {
        DeployError::Grant { biz, .. } => assert_eq!(biz, "faults@9.1.0"),
        other => panic!("expected a grant error, got {other:?}"),
    }
    assert!(
        grant.to_string().contains("unknown capability `teleport`"),
        "{grant}"
    );

    let clash = deploy_error(
        engine
            .deploy_biz(&faults_other_component(), &[], true)
            .await
            .expect_err("same version, other component"),
    );
    match &clash {
        DeployError::VersionClash { biz, version } => {
            assert_eq!(
                (biz.as_str(), version.as_str()),
                ("faults", &*info.version.to_string())
            );
        }
        other => panic!("expected a version clash, got {other:?}"),
    }
    assert_eq!(engine.bizes(), before, "a refused deploy changes nothing");
    container.shutdown().await;
}

/// Bizes deployed through the API meet the same signature policy as a
/// `.arkc`'s: the engine's `require_signed_bizes` and `trusted_keys` settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_meet_the_engines_signature_policy() {
    use arkline::ark::SecretKey;
    use arkline::{DeployError, EngineError};
    let data = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container");
    let engine = container.engine("team-a").await.expect("engine");
    let trusted = SecretKey::generate().expect("key");
    let stranger = SecretKey::generate().expect("key");
    let sign = |version: &str, key: &SecretKey| {
        Ark::from_bytes(&faults_version(version))
            .expect("reads")
            .signed(key)
            .expect("signs")
    };
    let refusal = |e: EngineError| match e {
        EngineError::Deploy { error, .. } => match *error {
            DeployError::Signature { biz, source, .. } => format!("{biz}: {source}"),
            other => panic!("expected a signature refusal, got {other:?}"),
        },
        other => panic!("expected a deploy error, got {other:?}"),
    };
    let mut settings = engine.settings().await.expect("settings");
    settings.require_signed_bizes = true;
    settings.trusted_keys = vec![trusted.public_key().to_string()];
    engine.apply_settings(settings).await.expect("applies");

    let unsigned = refusal(
        engine
            .deploy_biz(&faults_version("9.0.2"), &[], true)
            .await
            .expect_err("unsigned"),
    );
    assert!(unsigned.starts_with("faults@9.0.2"), "{unsigned}");
    let untrusted = refusal(
        engine
            .deploy_biz(&sign("9.0.3", &stranger), &[], true)
            .await
            .expect_err("untrusted key"),
    );
    assert!(
        untrusted.contains(&stranger.public_key().id()),
        "{untrusted}"
    );
    assert!(engine.bizes().is_empty(), "nothing refused was installed");
    let info = engine
        .deploy_biz(&sign("9.0.4", &trusted), &[], true)
        .await
        .expect("a biz signed by a trusted key deploys");
    assert_eq!(info.version.to_string(), "9.0.4");
    container.shutdown().await;
}

/// Issue 19, item 15: when `shutdown` returns, every task is done and the store
/// file is closed, so the data dir opens again at once — 50 times in a row,
/// each time with a finished execution, one still running (its driver stops
/// with the shutdown) and a watch stream the caller still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_then_reopen_never_finds_the_store_locked() {
    use arkline::ContainerError;
    use arkline::model::StepPhase;
    use arkline::store::StoreError;
    use futures::StreamExt;

    const ROUNDS: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let quick = "name: quick\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: hi }\n";
    let slow = "name: slow\nstages:\n  - name: s\n    steps:\n      - name: nap\n        uses: faults/sleep\n        with: { ms: 600000 }\n";
    for round in 0..ROUNDS {
        let container = match Container::builder().data_dir(dir.path()).build() {
            Ok(c) => c,
            Err(ContainerError::Store(StoreError::Locked { path })) => {
                panic!(
                    "round {round}: {} is still locked after shutdown",
                    path.display()
                )
            }
            Err(e) => panic!("round {round}: the container does not build: {e}"),
        };
        let engine = container.engine("loop").await.expect("engine starts");
        if round == 0 {
            engine
                .deploy_biz(&faults_bytes(), &[], true)
                .await
                .expect("deploys");
            engine
                .apply_pipeline_yaml("quick.yaml", quick)
                .await
                .expect("applies quick");
            engine
                .apply_pipeline_yaml("slow.yaml", slow)
                .await
                .expect("applies slow");
        }
        let exec = engine
            .trigger("quick", TriggerRequest::manual())
            .await
            .expect("trigger quick");
        let done = wait(&engine, &exec.metadata.name).await;
        assert_eq!(
            done.status.phase,
            ExecutionPhase::Succeeded,
            "round {round}: {:#?}",
            done.status
        );
        // A step running when the shutdown comes, and a watch still held.
        let napping = engine
            .trigger("slow", TriggerRequest::manual())
            .await
            .expect("trigger slow");
        let mut states = engine
            .watch_execution(&napping.metadata.name)
            .await
            .expect("watch");
        tokio::time::timeout(LIMIT, async {
            while let Some(state) = states.next().await {
                let state = state.expect("state");
                if state
                    .status
                    .stages
                    .first()
                    .and_then(|s| s.steps.first())
                    .is_some_and(|s| s.phase == StepPhase::Running)
                {
                    return;
                }
            }
            panic!("round {round}: the watch ended before the step ran");
        })
        .await
        .expect("the slow step starts");
        container.shutdown().await;
        // Handles outlive the shutdown; they no longer reach the store.
        assert!(
            engine.execution(&napping.metadata.name).await.is_err(),
            "round {round}: the engine still reads a closed store"
        );
        drop(states);
    }
}

/// The faults archive with a component that is not valid WebAssembly past its
/// header (a compile failure, found only when compiling).
fn faults_that_does_not_compile(version: &str) -> Vec<u8> {
    let ark = Ark::from_bytes(&faults_bytes()).expect("reads");
    let mut manifest = ark.manifest.clone();
    manifest.version = semver::Version::parse(version).expect("version");
    let mut component = ark.component[..ark.component.len() / 2].to_vec();
    component.extend_from_slice(&[0xff; 64]);
    write_ark(manifest, &component, &ark.files)
        .expect("rewrites")
        .0
}

/// A deploy in the background answers before the compile, an execution
/// triggered meanwhile waits for the biz and succeeds, and a compile that
/// fails is reported, taken out of the desired state, and can be cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_deploy_answers_before_compiling_and_executions_wait_for_it() {
    use arkline::Deploying;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let container = Container::builder()
            .data_dir(dir.path())
            .build()
            .expect("builds");
        let engine = container.engine("team-a").await.expect("engine");
        let pending = match engine
            .deploy_biz_in_background(&faults_bytes(), &["process=true".into()], true)
            .await
            .expect("accepted")
        {
            Deploying::Installing(p) => p,
            other => panic!("nothing was installed yet: {other:?}"),
        };
        assert_eq!(
            (pending.name.as_str(), pending.failed.as_ref()),
            ("faults", None)
        );
        assert!(pending.step_types.iter().any(|s| s == "call-capability"));
        // Triggered before the compile is done: it waits for the biz.
        let exec = run(&engine, CALL_PROCESS).await;
        assert_eq!(
            exec.status.phase,
            ExecutionPhase::Succeeded,
            "{:#?}",
            exec.status
        );
        assert_eq!(
            exec.status.outputs["call"]["result"], "ok",
            "the grant came with it"
        );
        assert!(
            engine.pending_bizes().is_empty(),
            "{:?}",
            engine.pending_bizes()
        );
        assert_eq!(engine.bizes().len(), 1);

        // Deploying it again in the background: installed already, nothing to compile.
        match engine
            .deploy_biz_in_background(&faults_bytes(), &["process=true".into()], true)
            .await
            .expect("accepted")
        {
            Deploying::Installed(info) => assert_eq!(info.name, "faults"),
            other => panic!("it is installed: {other:?}"),
        }

        // A component that does not compile: accepted (its archive is
        // sound), then failed, with the reason, and not desired any more.
        let broken = faults_that_does_not_compile("2.0.0");
        assert!(matches!(
            engine
                .deploy_biz_in_background(&broken, &[], false)
                .await
                .expect("accepted"),
            Deploying::Installing(_)
        ));
        let failed = tokio::time::timeout(LIMIT, async {
            loop {
                if let Some(p) = engine
                    .pending_bizes()
                    .into_iter()
                    .find(|p| p.failed.is_some())
                {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the compile ends");
        assert_eq!(failed.version.to_string(), "2.0.0");
        let reason = failed.failed.expect("failed");
        assert!(reason.contains("faults@2.0.0"), "{reason}");
        assert_eq!(engine.bizes().len(), 1, "nothing was registered");
        // The failure is cleared by uninstalling that version.
        engine
            .uninstall(
                "faults",
                &semver::Version::new(2, 0, 0),
                UninstallMode::Wait,
            )
            .await
            .expect("clears the failure");
        assert!(
            engine.pending_bizes().is_empty(),
            "{:?}",
            engine.pending_bizes()
        );
        // The same archive deployed waiting: refused, nothing recorded.
        engine
            .deploy_biz(&broken, &[], false)
            .await
            .expect_err("does not compile");
        container.shutdown().await;
    }
    // After a restart: the one that installed is back, the failed one is not.
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("builds again");
    let engine = container.engine("team-a").await.expect("engine");
    let exec = run(&engine, CALL_PROCESS).await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    let versions: Vec<String> = engine
        .bizes()
        .iter()
        .map(|b| b.version.to_string())
        .collect();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(engine.pending_bizes().is_empty());
    container.shutdown().await;
}
