//! Behaviour specific to the redb backend: durability across reopen, retention,
//! group commit answers, and shutdown.

use std::sync::Arc;

use arkline::model::{API_VERSION, DynamicObject, ObjectMeta};
use arkline::store::{
    EventType, ListQuery, MemoryStore, ObjectRef, RedbOptions, RedbStore, Retention, Store,
    StoreError,
};
use futures::StreamExt;
use serde_json::json;

fn pipeline(name: &str) -> DynamicObject {
    DynamicObject {
        api_version: API_VERSION.into(),
        kind: "Pipeline".into(),
        metadata: ObjectMeta {
            name: name.into(),
            engine: "ci".into(),
            ..Default::default()
        },
        spec: json!({ "n": 1 }),
        status: serde_json::Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_revision_and_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.path(), dir.path().join("store.redb"));
    let a = store.create(pipeline("a")).await.unwrap();
    let mut a2 = a.clone();
    a2.status = json!({ "phase": "Running" });
    let a2 = store.update_status(a2).await.unwrap();
    store.create(pipeline("b")).await.unwrap();
    store.close().await.unwrap();

    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.revision().await.unwrap(), 3);
    assert_eq!(
        store.get(&ObjectRef::of(&a)).await.unwrap(),
        Some(a2.clone())
    );
    let mut events = store.watch("Pipeline", None, 1).await.unwrap();
    let e = events.next().await.unwrap().unwrap();
    assert_eq!((e.event_type, e.revision), (EventType::Modified, 2));
    assert_eq!(e.object, a2);
    assert_eq!(events.next().await.unwrap().unwrap().revision, 3);
    // Revisions continue where they stopped.
    let c = store.create(pipeline("c")).await.unwrap();
    assert_eq!(c.metadata.resource_version, 4);
    assert_eq!(events.next().await.unwrap().unwrap().revision, 4);
}

async fn retention_keeps_the_last_revisions(store: Arc<dyn Store>) {
    for i in 0..10 {
        store.create(pipeline(&format!("p{i}"))).await.unwrap();
    }
    assert_eq!(store.compacted_revision().await.unwrap(), 7);
    let err = match store.watch("Pipeline", None, 6).await {
        Err(e) => e,
        Ok(_) => panic!("revision 6 should be compacted"),
    };
    assert!(
        matches!(
            err,
            StoreError::Gone {
                requested: 6,
                compacted: 7
            }
        ),
        "{err}"
    );
    let mut events = store.watch("Pipeline", None, 7).await.unwrap();
    for expected in 8..=10 {
        assert_eq!(events.next().await.unwrap().unwrap().revision, expected);
    }
    assert_eq!(
        store
            .list(&ListQuery::kind("Pipeline"))
            .await
            .unwrap()
            .items
            .len(),
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_retention_keeps_the_last_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let options = RedbOptions::default().retention(Retention::unlimited().revisions(3));
    retention_keeps_the_last_revisions(Arc::new(
        RedbStore::open_with(dir.path(), options).unwrap(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_retention_keeps_the_last_revisions() {
    retention_keeps_the_last_revisions(Arc::new(MemoryStore::with_retention(
        Retention::unlimited().revisions(3),
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_operation_with_its_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    // 200 concurrent creates of 100 names: each name is won exactly once, and
    // every revision from 1 to 100 is used exactly once.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.create(pipeline(&format!("p{}", i % 100))).await
        }));
    }
    let mut revisions = Vec::new();
    let mut duplicates = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => revisions.push(o.metadata.resource_version),
            Err(StoreError::AlreadyExists { .. }) => duplicates += 1,
            Err(e) => panic!("{e}"),
        }
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (1..=100).collect::<Vec<_>>());
    assert_eq!(duplicates, 100);
    assert_eq!(store.revision().await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_end_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    store.create(pipeline("a")).await.unwrap();
    let mut events = store.watch("Pipeline", None, 0).await.unwrap();
    assert_eq!(events.next().await.unwrap().unwrap().revision, 1);
    drop(store);
    assert!(events.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = RedbStore::open(dir.path()).unwrap();
    let err = RedbStore::open(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Locked { .. }), "{text}");
    assert!(text.contains("store.redb"), "{text}");
    assert!(text.contains("another arkline process"), "{text}");
}
