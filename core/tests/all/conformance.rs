//! The store conformance suite: the same test functions run against every backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use arkline::model::{API_VERSION, DynamicObject, ObjectMeta};
use arkline::store::{
    DeleteOptions, DeleteOutcome, EventType, LabelSelector, ListQuery, MemoryStore, ObjectList,
    ObjectRef, RedbStore, Store, StoreError, WatchEvent, WatchStream,
};
use futures::StreamExt;
use serde_json::json;

/// A store under test (and whatever must outlive it).
struct Harness {
    store: Arc<dyn Store>,
    /// The revision of the empty store: 0, except on etcd (whose revision
    /// counts the cluster's own writes). Every expected revision is relative.
    base: u64,
    /// A watch is sent every event in history when it starts (etcd), so
    /// compaction after that takes nothing from it.
    watch_delivers_ahead: bool,
    _dir: Option<tempfile::TempDir>,
    #[cfg(feature = "etcd")]
    _etcd: Option<arkline_testkit::etcd::EtcdServer>,
}

fn memory() -> Harness {
    Harness {
        store: Arc::new(MemoryStore::with_retention(
            arkline::store::Retention::unlimited(),
        )),
        base: 0,
        watch_delivers_ahead: false,
        _dir: None,
        #[cfg(feature = "etcd")]
        _etcd: None,
    }
}

fn redb() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open_with(
        dir.path(),
        arkline::store::RedbOptions::default().retention(arkline::store::Retention::unlimited()),
    )
    .expect("open redb store");
    Harness {
        store: Arc::new(store),
        base: 0,
        watch_delivers_ahead: false,
        _dir: Some(dir),
        #[cfg(feature = "etcd")]
        _etcd: None,
    }
}

/// A store on a private, fresh etcd server.
#[cfg(feature = "etcd")]
async fn etcd() -> Harness {
    let server = arkline_testkit::etcd::EtcdServer::start();
    let options = arkline::store::EtcdOptions::new([server.endpoint()])
        .retention(arkline::store::Retention::unlimited());
    let store = arkline::store::EtcdStore::connect(options)
        .await
        .expect("connect to the test etcd");
    let base = store.revision().await.unwrap();
    Harness {
        store: Arc::new(store),
        base,
        watch_delivers_ahead: true,
        _dir: None,
        _etcd: Some(server),
    }
}

fn object(kind: &str, engine: &str, name: &str, labels: &[(&str, &str)]) -> DynamicObject {
    DynamicObject {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta {
            name: name.into(),
            engine: engine.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        },
        spec: json!({ "n": 0 }),
        status: serde_json::Value::Null,
    }
}

fn pipeline(name: &str) -> DynamicObject {
    object("Pipeline", "ci", name, &[])
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    stream
        .next()
        .await
        .expect("watch stream ended")
        .expect("watch stream failed")
}

async fn create_sets_store_fields_and_refuses_duplicates(h: Harness) {
    let (s, b) = (h.store, h.base);
    assert_eq!(s.revision().await.unwrap(), b);
    let mut input = pipeline("a");
    input.metadata.uid = "forged".into();
    input.metadata.generation = 42;
    input.metadata.resource_version = 99;
    let a = s.create(input).await.unwrap();
    assert_eq!(a.metadata.resource_version, b + 1);
    assert_eq!(a.metadata.generation, 1);
    assert!(a.metadata.created.is_some());
    assert_ne!(a.metadata.uid, "forged");
    assert_eq!(a.metadata.uid.len(), 36, "uuid text: {}", a.metadata.uid);
    assert_eq!(s.revision().await.unwrap(), b + 1);
    assert_eq!(s.get(&ObjectRef::of(&a)).await.unwrap(), Some(a.clone()));

    let err = s.create(pipeline("a")).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("\"a\""), "{err}");
    assert_eq!(
        s.revision().await.unwrap(),
        b + 1,
        "a failed write uses no revision"
    );

    // Same name in another engine or kind is another object.
    let o2 = s
        .create(object("Pipeline", "other", "a", &[]))
        .await
        .unwrap();
    let c = s.create(object("Secret", "ci", "a", &[])).await.unwrap();
    assert_eq!(
        (o2.metadata.resource_version, c.metadata.resource_version),
        (b + 2, b + 3)
    );
    assert_ne!(a.metadata.uid, o2.metadata.uid);
}

async fn update_is_compare_and_swap(h: Harness) {
    let (s, b) = (h.store, h.base);
    let v1 = s.create(pipeline("p")).await.unwrap();
    let mut change = v1.clone();
    change.spec = json!({ "n": 1 });
    let v2 = s.update(change.clone()).await.unwrap();
    assert_eq!(v2.metadata.resource_version, b + 2);

    // A second writer holding v1 loses.
    let err = s.update(change).await.unwrap_err();
    match &err {
        StoreError::Conflict {
            key,
            expected,
            actual,
        } => {
            assert_eq!(key, &ObjectRef::new("Pipeline", "ci", "p"));
            assert_eq!((*expected, *actual), (b + 1, b + 2));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("\"p\"")
            && text.contains(&(b + 1).to_string())
            && text.contains(&(b + 2).to_string()),
        "{text}"
    );
    assert_eq!(s.get(&ObjectRef::of(&v2)).await.unwrap(), Some(v2));

    let err = s.update(pipeline("missing")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

async fn concurrent_cas_has_exactly_one_winner(h: Harness) {
    let (s, b) = (h.store, h.base);
    let v1 = s.create(pipeline("p")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (s, mut obj) = (s.clone(), v1.clone());
        obj.spec = json!({ "n": i });
        tasks.push(tokio::spawn(async move { s.update(obj).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert!(e.is_conflict(), "{e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(s.revision().await.unwrap(), b + 2);

    // Retrying on conflict, every increment lands.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let mut obj = s
                    .get(&ObjectRef::new("Pipeline", "ci", "p"))
                    .await
                    .unwrap()
                    .unwrap();
                let n = obj.status["count"].as_u64().unwrap_or(0);
                obj.status = json!({ "count": n + 1 });
                match s.update_status(obj).await {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let obj = s
        .get(&ObjectRef::new("Pipeline", "ci", "p"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(obj.status["count"], 16);
}

async fn generation_follows_spec_only(h: Harness) {
    let (s, b) = (h.store, h.base);
    let v1 = s.create(pipeline("p")).await.unwrap();

    let mut labels_only = v1.clone();
    labels_only
        .metadata
        .labels
        .insert("team".into(), "a".into());
    labels_only
        .metadata
        .annotations
        .insert("note".into(), "x".into());
    let v2 = s.update(labels_only).await.unwrap();
    assert_eq!(v2.metadata.generation, 1);
    assert_eq!(v2.metadata.labels["team"], "a");
    assert_eq!(v2.metadata.annotations["note"], "x");

    let mut same_spec = v2.clone();
    same_spec.spec = json!({ "n": 0 });
    let v3 = s.update(same_spec).await.unwrap();
    assert_eq!(v3.metadata.generation, 1);
    assert_eq!(v3.metadata.resource_version, b + 3);

    let mut new_spec = v3.clone();
    new_spec.spec = json!({ "n": 7 });
    let v4 = s.update(new_spec).await.unwrap();
    assert_eq!(v4.metadata.generation, 2);
    assert_eq!(v4.metadata.uid, v1.metadata.uid);
    assert_eq!(v4.metadata.created, v1.metadata.created);

    // Store-owned fields cannot be forged through update.
    let mut forged = v4.clone();
    forged.metadata.uid = "x".into();
    forged.metadata.generation = 100;
    let v5 = s.update(forged).await.unwrap();
    assert_eq!(v5.metadata.uid, v1.metadata.uid);
    assert_eq!(v5.metadata.generation, 2);
}

async fn status_update_is_separate_and_cas(h: Harness) {
    let (s, b) = (h.store, h.base);
    let v1 = s.create(pipeline("p")).await.unwrap();

    let mut with_status = v1.clone();
    with_status.status = json!({ "phase": "Running" });
    with_status.spec = json!({ "n": 99 });
    let v2 = s.update_status(with_status.clone()).await.unwrap();
    assert_eq!(v2.status, json!({ "phase": "Running" }));
    assert_eq!(
        v2.spec,
        json!({ "n": 0 }),
        "status update must not touch spec"
    );
    assert_eq!(v2.metadata.generation, 1);
    assert_eq!(v2.metadata.resource_version, b + 2);

    let err = s.update_status(with_status).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");

    // A spec update ignores status.
    let mut spec_change = v2.clone();
    spec_change.status = json!({ "phase": "Forged" });
    spec_change.spec = json!({ "n": 1 });
    let v3 = s.update(spec_change).await.unwrap();
    assert_eq!(v3.status, json!({ "phase": "Running" }));
    assert_eq!(v3.metadata.generation, 2);
}

async fn encoded_status_writes_splice_the_status_in(h: Harness) {
    use serde_json::value::to_raw_value;
    let (s, b) = (h.store, h.base);
    let mut labelled = object("Pipeline", "ci", "p", &[("app", "web")]);
    labelled.spec =
        json!({ "n": 7, "nested": { "list": [1, "two", null], "esc": "a\"b\\c\u{e9}" } });
    labelled
        .metadata
        .annotations
        .insert("note".into(), "kept".into());
    let v1 = s.create(labelled).await.unwrap();
    let key = ObjectRef::new("Pipeline", "ci", "p");
    let mut events = s.watch("Pipeline", Some("ci"), b + 1).await.unwrap();

    let status = to_raw_value(&json!({ "phase": "Running", "n": [1, 2] })).unwrap();
    let meta = s.write_status_json(&key, b + 1, status).await.unwrap();
    assert_eq!(meta.resource_version, b + 2);
    assert_eq!(meta.generation, 1);
    assert_eq!(meta.uid, v1.metadata.uid);
    let v2 = s.get(&key).await.unwrap().unwrap();
    let mut expected = v1.clone();
    expected.status = json!({ "phase": "Running", "n": [1, 2] });
    expected.metadata.resource_version = b + 2;
    assert_eq!(v2, expected, "only the status and the version change");
    assert_eq!(v2.metadata, meta);
    let event = next_event(&mut events).await;
    assert_eq!(event.event_type, EventType::Modified);
    assert_eq!(event.revision, b + 2);
    assert_eq!(event.object, expected);

    // Compare-and-swap on the version given; a missing object is not found.
    let err = s
        .write_status_json(&key, b + 1, to_raw_value(&json!({})).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let missing = ObjectRef::new("Pipeline", "ci", "nope");
    let err = s
        .write_status_json(&missing, b + 1, to_raw_value(&json!({})).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(s.get(&key).await.unwrap().unwrap(), expected);
    assert_eq!(s.revision().await.unwrap(), b + 2);

    // A spec update after it keeps the spliced status.
    let mut spec_change = v2.clone();
    spec_change.spec = json!({ "n": 8 });
    let v3 = s.update(spec_change).await.unwrap();
    assert_eq!(v3.status, json!({ "phase": "Running", "n": [1, 2] }));
    assert_eq!(v3.metadata.generation, 2);
}

/// `list`, checked against `list_encoded` (the same objects in the same order,
/// at the same revision) and `get_encoded` (each item as `get` has it).
async fn list_both(s: &dyn Store, query: &ListQuery) -> Result<ObjectList, StoreError> {
    let list = s.list(query).await?;
    let encoded = s.list_encoded(query).await?;
    assert_eq!(encoded.revision, list.revision, "{query:?}");
    let decoded: Vec<_> = encoded
        .items
        .into_iter()
        .map(|o| o.into_dynamic().unwrap())
        .collect();
    assert_eq!(decoded, list.items, "{query:?}");
    for obj in &list.items {
        let key = ObjectRef::new(&obj.kind, &obj.metadata.engine, &obj.metadata.name);
        let got = s
            .get_encoded(&key)
            .await?
            .map(|o| o.into_dynamic().unwrap());
        assert_eq!(got.as_ref(), Some(obj));
        assert_eq!(got, s.get(&key).await?);
    }
    Ok(list)
}

async fn list_filters_by_kind_engine_and_labels(h: Harness) {
    let (s, b) = (h.store, h.base);
    for (engine, name, labels) in [
        ("ci", "a", vec![("app", "web"), ("tier", "front")]),
        ("ci", "b", vec![("app", "web"), ("tier", "db")]),
        ("ci", "c", vec![("app", "api")]),
        ("cd", "d", vec![("app", "web")]),
        ("ci-2", "e", vec![("app", "web")]),
    ] {
        s.create(object("Pipeline", engine, name, &labels))
            .await
            .unwrap();
    }
    s.create(object("PipelineExecution", "ci", "x", &[("app", "web")]))
        .await
        .unwrap();

    let names = |list: ObjectList| {
        list.items
            .into_iter()
            .map(|o| o.metadata.name)
            .collect::<Vec<_>>()
    };
    let all = list_both(&*s, &ListQuery::kind("Pipeline")).await.unwrap();
    assert_eq!(all.revision, b + 6);
    assert_eq!(names(all), ["d", "a", "b", "c", "e"]);
    let ci = s
        .list(&ListQuery::kind("Pipeline").engine("ci"))
        .await
        .unwrap();
    assert_eq!(
        names(ci),
        ["a", "b", "c"],
        "engine `ci` must not match `ci-2`"
    );

    let cases: &[(&str, &[&str])] = &[
        ("app=web", &["a", "b"]),
        ("app=web,tier!=db", &["a"]),
        ("app!=web", &["c"]),
        ("tier in (db,front)", &["a", "b"]),
        ("tier notin (db)", &["a", "c"]),
        ("tier", &["a", "b"]),
        ("!tier", &["c"]),
        ("app in (api), !tier", &["c"]),
    ];
    for (selector, expected) in cases {
        let sel: LabelSelector = selector.parse().unwrap();
        let got = names(
            list_both(&*s, &ListQuery::kind("Pipeline").engine("ci").selector(sel))
                .await
                .unwrap(),
        );
        assert_eq!(&got, expected, "selector {selector}");
    }
    assert!(
        list_both(&*s, &ListQuery::kind("Nothing"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // By name: the one object (a name that prefixes another's is not a match),
    // within the selector; or none.
    let named = |engine: Option<&str>, name: &str| {
        let mut query = ListQuery::kind("Pipeline").named(name);
        query.engine = engine.map(str::to_owned);
        query
    };
    s.create(object("Pipeline", "ci", "a-2", &[]))
        .await
        .unwrap();
    assert_eq!(
        names(list_both(&*s, &named(Some("ci"), "a")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(list_both(&*s, &named(None, "a")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        names(list_both(&*s, &named(None, "d")).await.unwrap()),
        ["d"]
    );
    assert!(
        list_both(&*s, &named(Some("cd"), "a"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        list_both(&*s, &named(Some("ci"), "zz"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let sel: LabelSelector = "tier=db".parse().unwrap();
    assert!(
        list_both(&*s, &named(Some("ci"), "a").selector(sel))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

async fn watch_replays_from_a_revision_then_follows(h: Harness) {
    let (s, b) = (h.store, h.base);
    let a = s.create(pipeline("a")).await.unwrap(); // 1
    s.create(object("Secret", "ci", "s", &[])).await.unwrap(); // 2
    let mut a2 = a.clone();
    a2.spec = json!({ "n": 2 });
    let a2 = s.update(a2).await.unwrap(); // 3
    s.create(object("Pipeline", "cd", "b", &[])).await.unwrap(); // 4

    let mut all = s.watch("Pipeline", None, b + 1).await.unwrap();
    let e = next_event(&mut all).await;
    assert_eq!((e.event_type, e.revision), (EventType::Modified, b + 3));
    assert_eq!(e.object, a2);
    let e = next_event(&mut all).await;
    assert_eq!(
        (e.event_type, e.revision, e.object.metadata.name.as_str()),
        (EventType::Added, b + 4, "b")
    );

    let mut ci = s.watch("Pipeline", Some("ci"), b).await.unwrap();
    assert_eq!(next_event(&mut ci).await.revision, b + 1);
    assert_eq!(next_event(&mut ci).await.revision, b + 3);

    // Live events, in order, for both watchers.
    s.delete(&ObjectRef::of(&a2), &DeleteOptions::default())
        .await
        .unwrap(); // 5
    s.create(pipeline("c")).await.unwrap(); // 6
    s.create(object("Pipeline", "cd", "d", &[])).await.unwrap(); // 7
    for expected in [(EventType::Deleted, b + 5), (EventType::Added, b + 6)] {
        let e = next_event(&mut ci).await;
        assert_eq!((e.event_type, e.revision), expected);
    }
    let e = next_event(&mut all).await;
    assert_eq!((e.event_type, e.revision), (EventType::Deleted, b + 5));
    assert_eq!(e.object.metadata.name, "a");
    assert_eq!(e.object.metadata.resource_version, b + 5);
    assert_eq!(next_event(&mut all).await.revision, b + 6);
    assert_eq!(next_event(&mut all).await.revision, b + 7);

    // A watch from the head sees only what comes next.
    let mut from_head = s.watch("Pipeline", None, b + 7).await.unwrap();
    s.create(pipeline("z")).await.unwrap();
    assert_eq!(next_event(&mut from_head).await.object.metadata.name, "z");
}

async fn watch_answers_gone_after_compaction(h: Harness) {
    let delivered_before_compaction = h.watch_delivers_ahead;
    let (s, b) = (h.store, h.base);
    for i in 0..5 {
        s.create(pipeline(&format!("p{i}"))).await.unwrap();
    }
    let mut early = s.watch("Pipeline", None, b + 1).await.unwrap();
    s.compact(b + 3).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), b + 3);

    let err = match s.watch("Pipeline", None, b + 2).await {
        Err(e) => e,
        Ok(_) => panic!("watch from a compacted revision must fail"),
    };
    match err {
        StoreError::Gone {
            requested,
            compacted,
        } => assert_eq!((requested, compacted), (b + 2, b + 3)),
        other => panic!("expected Gone, got {other}"),
    }
    // From the compacted revision itself nothing is missing.
    let mut ok = s.watch("Pipeline", None, b + 3).await.unwrap();
    assert_eq!(next_event(&mut ok).await.revision, b + 4);

    let item = early.next().await.expect("an item");
    if delivered_before_compaction {
        // etcd had sent this watch its events when it started: it goes on,
        // without a gap, as a Kubernetes watch does.
        let first = item.expect("the events after revision 1");
        assert_eq!(first.revision, b + 2);
        for r in 3..=5 {
            assert_eq!(next_event(&mut early).await.revision, b + r);
        }
    } else {
        // A watcher that fell behind learns it on the stream.
        assert!(
            matches!(
                item,
                Err(StoreError::Gone {
                    requested,
                    compacted,
                }) if (requested, compacted) == (b + 1, b + 3)
            ),
            "{item:?}"
        );
        assert!(early.next().await.is_none(), "the stream ends after Gone");
    }

    // Compacting past the head stops at the head; compacting backwards is a no-op.
    s.compact(b + 1000).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), b + 5);
    s.compact(b + 1).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), b + 5);
    // Objects survive compaction.
    assert_eq!(
        s.list(&ListQuery::kind("Pipeline"))
            .await
            .unwrap()
            .items
            .len(),
        5
    );
}

async fn finalizers_hold_deletion(h: Harness) {
    let (s, b) = (h.store, h.base);
    let mut input = pipeline("p");
    input.metadata.finalizers = vec!["arkline.dev/cleanup".into(), "other".into()];
    let v1 = s.create(input).await.unwrap();
    let key = ObjectRef::of(&v1);
    let mut watch = s.watch("Pipeline", None, b + 1).await.unwrap();

    let pending = match s.delete(&key, &DeleteOptions::default()).await.unwrap() {
        DeleteOutcome::Pending(o) => o,
        other => panic!("expected Pending, got {other:?}"),
    };
    assert!(pending.metadata.deletion_requested.is_some());
    assert_eq!(pending.metadata.resource_version, b + 2);
    assert_eq!(s.get(&key).await.unwrap(), Some(pending.clone()));

    // Deleting again changes nothing.
    assert!(matches!(
        s.delete(&key, &DeleteOptions::default()).await.unwrap(),
        DeleteOutcome::Pending(_)
    ));
    assert_eq!(s.revision().await.unwrap(), b + 2);

    // No finalizer may be added while deleting.
    let mut add = pending.clone();
    add.metadata.finalizers.push("late".into());
    let err = s.update(add).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");

    let mut remove_one = pending.clone();
    remove_one.metadata.finalizers = vec!["other".into()];
    let v3 = s.update(remove_one).await.unwrap();
    assert_eq!(v3.metadata.finalizers, ["other"]);
    assert!(s.get(&key).await.unwrap().is_some());

    let mut remove_last = v3.clone();
    remove_last.metadata.finalizers.clear();
    let last = s.update(remove_last).await.unwrap();
    assert!(last.metadata.finalizers.is_empty());
    assert_eq!(s.get(&key).await.unwrap(), None);

    let kinds: Vec<_> = [
        next_event(&mut watch).await,
        next_event(&mut watch).await,
        next_event(&mut watch).await,
    ]
    .into_iter()
    .map(|e| (e.event_type, e.revision))
    .collect();
    assert_eq!(
        kinds,
        [
            (EventType::Modified, b + 2),
            (EventType::Modified, b + 3),
            (EventType::Deleted, b + 4)
        ]
    );
}

async fn delete_checks_preconditions(h: Harness) {
    let (s, b) = (h.store, h.base);
    let v1 = s.create(pipeline("p")).await.unwrap();
    let key = ObjectRef::of(&v1);
    let err = s
        .delete(&key, &DeleteOptions::default().resource_version(b + 7))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected,
                actual,
                ..
            } if (expected, actual) == (b + 7, b + 1)
        ),
        "{err}"
    );
    let gone = s
        .delete(&key, &DeleteOptions::default().resource_version(b + 1))
        .await
        .unwrap();
    assert!(matches!(gone, DeleteOutcome::Deleted(o) if o.metadata.name == "p"));
    let err = s.delete(&key, &DeleteOptions::default()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    // The name can be reused, with a new uid.
    let again = s.create(pipeline("p")).await.unwrap();
    assert_ne!(again.metadata.uid, v1.metadata.uid);
}

async fn invalid_objects_are_refused_with_reasons(h: Harness) {
    let (s, b) = (h.store, h.base);
    for (obj, needle) in [
        (pipeline(""), "name"),
        (pipeline("a/b"), "name"),
        (object("", "ci", "x", &[]), "kind"),
        (object("Pipeline", "c/i", "x", &[]), "engine"),
    ] {
        let err = s.create(obj).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    let mut wrong_version = pipeline("x");
    wrong_version.api_version = "v0".into();
    let err = s.create(wrong_version).await.unwrap_err();
    assert!(err.to_string().contains(API_VERSION), "{err}");
    assert_eq!(s.revision().await.unwrap(), b);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::memory()).await;
                }
            )*
        }
        mod redb_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::redb()).await;
                }
            )*
        }
        #[cfg(feature = "etcd")]
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::etcd().await).await;
                }
            )*
        }
    };
}

conformance!(
    create_sets_store_fields_and_refuses_duplicates,
    update_is_compare_and_swap,
    concurrent_cas_has_exactly_one_winner,
    generation_follows_spec_only,
    status_update_is_separate_and_cas,
    encoded_status_writes_splice_the_status_in,
    list_filters_by_kind_engine_and_labels,
    watch_replays_from_a_revision_then_follows,
    watch_answers_gone_after_compaction,
    finalizers_hold_deletion,
    delete_checks_preconditions,
    invalid_objects_are_refused_with_reasons,
);
