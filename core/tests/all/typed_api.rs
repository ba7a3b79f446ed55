//! Typed access through `Api<R>` for a `Resource`.

use std::sync::Arc;

use arkline::controller::{Action, Controller};
use arkline::model::{API_VERSION, DynamicObject, ObjectMeta, Resource};
use arkline::store::{
    Api, DeleteOptions, DeleteOutcome, EventType, MemoryStore, Store, StoreError,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SettingSpec {
    executor_quota: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct SettingStatus {
    running: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Setting {
    metadata: ObjectMeta,
    spec: SettingSpec,
    status: SettingStatus,
}

impl Resource for Setting {
    const KIND: &'static str = "PipelineSetting";
    type Spec = SettingSpec;
    type Status = SettingStatus;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        Ok(DynamicObject {
            api_version: API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: self.metadata.clone(),
            spec: serde_json::to_value(&self.spec)?,
            status: serde_json::to_value(&self.status)?,
        })
    }

    fn from_dynamic(obj: DynamicObject) -> Result<Self, serde_json::Error> {
        let status = if obj.status.is_null() {
            SettingStatus::default()
        } else {
            serde_json::from_value(obj.status)?
        };
        Ok(Self {
            metadata: obj.metadata,
            spec: serde_json::from_value(obj.spec)?,
            status,
        })
    }
}

fn setting(quota: i64) -> Setting {
    Setting {
        metadata: ObjectMeta {
            name: "default".into(),
            engine: "ci".into(),
            ..Default::default()
        },
        spec: SettingSpec {
            executor_quota: quota,
        },
        status: SettingStatus::default(),
    }
}

#[tokio::test]
async fn typed_objects_round_trip_through_the_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = Api::<Setting>::new(store.clone());
    let created = api.create(&setting(4)).await.unwrap();
    assert_eq!(created.metadata.generation, 1);
    let mut events = api.watch(Some("ci"), 0).await.unwrap();

    let mut s = created.clone();
    s.status.running = 2;
    let s = api.update_status(&s).await.unwrap();
    let mut s2 = s.clone();
    s2.spec.executor_quota = 8;
    let s2 = api.update(&s2).await.unwrap();
    assert_eq!((s2.metadata.generation, s2.status.running), (2, 2));

    let (items, revision) = api.list(Some("ci"), "".parse().unwrap()).await.unwrap();
    assert_eq!(items, vec![s2.clone()]);
    assert_eq!(revision, 3);
    assert_eq!(api.get("ci", "default").await.unwrap(), Some(s2.clone()));

    let first = events.next().await.unwrap().unwrap();
    assert_eq!(
        (first.event_type, first.object.spec.executor_quota),
        (EventType::Added, 4)
    );

    let outcome = api
        .delete("ci", "default", &DeleteOptions::default())
        .await
        .unwrap();
    assert!(matches!(outcome, DeleteOutcome::Deleted(_)));
    assert_eq!(api.get("ci", "default").await.unwrap(), None);
}

#[tokio::test]
async fn a_stored_object_of_the_wrong_shape_is_a_conversion_error() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut raw = setting(1).to_dynamic().unwrap();
    raw.spec = serde_json::json!({ "executor_quota": "many" });
    store.create(raw).await.unwrap();
    let err = Api::<Setting>::new(store)
        .get("ci", "default")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conversion { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("PipelineSetting") && text.contains("default"),
        "{text}"
    );
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] StoreError);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_controller_reconciles_typed_objects() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let api = Api::<Setting>::new(store.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Setting>::new(store.clone())
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |setting: Arc<Setting>, api: Arc<Api<Setting>>| async move {
                    let quota = u32::try_from(setting.spec.executor_quota).unwrap_or(0);
                    if setting.status.running != quota {
                        let mut next = (*setting).clone();
                        next.status.running = quota;
                        api.update_status(&next).await?;
                    }
                    Ok::<_, ReconcileError>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new(api.clone()),
            )
            .for_each(|_| async {}),
    );
    let created = api.create(&setting(3)).await.unwrap();
    let mut events = api
        .watch(Some("ci"), created.metadata.resource_version)
        .await
        .unwrap();
    let reconciled = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let e = events.next().await.unwrap().unwrap();
            if e.object.status.running == 3 {
                return e.object;
            }
        }
    })
    .await
    .expect("the typed reconciler wrote status");
    assert_eq!(reconciled.metadata.generation, 1);
    stop.send(()).unwrap();
    controller.await.unwrap();
}

#[tokio::test]
async fn write_status_writes_only_the_status_and_typed_watches_decode_the_stored_json() {
    use arkline::model::{ExecutionPhase, PipelineExecution, PipelineExecutionSpec};
    use arkline::store::RedbStore;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    let api = Api::<PipelineExecution>::new(store.clone());
    let pipeline = arkline::model::parse_pipeline(
        "p.yaml",
        "name: p\nstages: [{name: s, steps: [{name: a, uses: shell}]}]\n",
    )
    .unwrap();
    let created = api
        .create(&PipelineExecution::new(
            ObjectMeta::new("ci", "p-1"),
            PipelineExecutionSpec {
                pipeline: "p".into(),
                pipeline_spec: pipeline.spec,
                run: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let mut typed = api.watch(Some("ci"), 0).await.unwrap();
    let mut untyped = store
        .watch("PipelineExecution", Some("ci"), 0)
        .await
        .unwrap();

    let mut status = created.status.clone();
    status.phase = ExecutionPhase::Running;
    let meta = api.write_status(&created.metadata, &status).await.unwrap();
    assert_eq!(meta.resource_version, created.metadata.resource_version + 1);
    // The version it was given is checked, as by update_status.
    let stale = api.write_status(&created.metadata, &status).await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let stored = api.get("ci", "p-1").await.unwrap().unwrap();
    assert_eq!(stored.spec, created.spec, "the spec is left as it was");
    assert_eq!(stored.status, status);
    assert_eq!(stored.metadata, meta);

    // Both watches see the same two objects: the typed one decoded straight from
    // the stored JSON, the untyped one through `DynamicObject`.
    for expected in [&created, &stored] {
        let event = typed.next().await.unwrap().unwrap();
        assert_eq!(&event.object, expected);
        let event = untyped.next().await.unwrap().unwrap();
        assert_eq!(
            PipelineExecution::from_dynamic(event.object).unwrap(),
            *expected
        );
    }
}
