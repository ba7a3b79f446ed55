//! The `cache` capability from a real guest: round trip, per-engine namespaces,
//! the grant check, and the size cap.

use std::sync::Arc;

use arkline::ark::Ark;
use arkline::host::BlobCache;
use arkline::host::Capabilities;
use arkline::runtime::{
    Activation, BizLease, BizRegistry, Runtime, RuntimeConfig, StepCall, StepFailure,
};
use serde_json::json;

async fn engine(
    runtime: &Runtime,
    name: &str,
    cache_dir: &std::path::Path,
    cap: u64,
    grant: bool,
) -> (BizRegistry, BizLease) {
    let ark = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    let registry = BizRegistry::new(runtime.clone(), name);
    registry.set_blob_cache(BlobCache::open(cache_dir.join(name), cap).expect("cache opens"));
    let grants = Capabilities {
        cache: grant,
        ..Capabilities::default()
    };
    registry
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let lease = registry.resolve("faults").expect("resolves");
    (registry, lease)
}

async fn op(
    lease: &BizLease,
    config: serde_json::Value,
) -> Result<std::collections::BTreeMap<String, String>, StepFailure> {
    lease
        .invoke(StepCall::new("cache", config))
        .await
        .result
        .map(|o| o.outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_have_separate_caches_and_values_round_trip() {
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(8)).expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_a, team_a) = engine(&runtime, "team-a", dir.path(), 1 << 20, true).await;
    let (_b, team_b) = engine(&runtime, "team-b", dir.path(), 1 << 20, true).await;

    op(
        &team_a,
        json!({ "op": "put", "key": "deps", "value": "from a" }),
    )
    .await
    .expect("put");
    let got = op(&team_a, json!({ "op": "get", "key": "deps" }))
        .await
        .expect("get");
    assert_eq!(got["found"], "true");
    assert_eq!(got["value"], "from a");
    // Same key, other engine: not visible.
    let got = op(&team_b, json!({ "op": "get", "key": "deps" }))
        .await
        .expect("get");
    assert_eq!(got["found"], "false");
    op(&team_a, json!({ "op": "remove", "key": "deps" }))
        .await
        .expect("remove");
    let got = op(&team_a, json!({ "op": "get", "key": "deps" }))
        .await
        .expect("get");
    assert_eq!(got["found"], "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_needs_a_grant_and_respects_its_size() {
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(8)).expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_r, ungranted) = engine(&runtime, "no-grant", dir.path(), 1 << 20, false).await;
    match op(&ungranted, json!({ "op": "get", "key": "k" })).await {
        Err(StepFailure::Failed(message)) => assert!(
            message.contains("capability `cache` denied") && message.contains("no-grant"),
            "{message}"
        ),
        other => panic!("expected a denial, got {other:?}"),
    }

    let (registry, small) = engine(&runtime, "small", dir.path(), 16, true).await;
    match op(
        &small,
        json!({ "op": "put", "key": "big", "value": "x".repeat(17) }),
    )
    .await
    {
        Err(StepFailure::Failed(message)) => assert!(message.contains("over"), "{message}"),
        other => panic!("expected too-large, got {other:?}"),
    }
    op(
        &small,
        json!({ "op": "put", "key": "one", "value": "12345678" }),
    )
    .await
    .expect("put");
    op(
        &small,
        json!({ "op": "put", "key": "two", "value": "abcdefgh" }),
    )
    .await
    .expect("put");
    op(
        &small,
        json!({ "op": "put", "key": "three", "value": "ABCDEFGH" }),
    )
    .await
    .expect("put");
    // "one" was least recently used and is evicted to stay within 16 bytes.
    let got = op(&small, json!({ "op": "get", "key": "one" }))
        .await
        .expect("get");
    assert_eq!(got["found"], "false");
    assert!(registry.blob_cache().expect("cache").size() <= 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bizs_keys_live_in_its_own_namespace_apart_from_step_caches() {
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(8)).expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (registry, lease) = engine(&runtime, "team-a", dir.path(), 1 << 20, true).await;
    let cache = registry.blob_cache().expect("the engine's cache");
    // A pipeline's step cache under `deps`.
    cache
        .put(
            &BlobCache::key_in("step", "deps").expect("key"),
            b"step tar",
        )
        .expect("put");
    // The biz sees nothing under the same key, and what it writes there
    // does not replace the step cache.
    let got = op(&lease, json!({ "op": "get", "key": "deps" }))
        .await
        .expect("get");
    assert_eq!(got["found"], "false");
    op(
        &lease,
        json!({ "op": "put", "key": "deps", "value": "poison" }),
    )
    .await
    .expect("put");
    assert_eq!(
        cache
            .get(&BlobCache::key_in("step", "deps").expect("key"))
            .expect("get")
            .as_deref(),
        Some(&b"step tar"[..])
    );
    assert_eq!(
        cache
            .get(&BlobCache::key_in("biz/faults", "deps").expect("key"))
            .expect("get")
            .as_deref(),
        Some(&b"poison"[..])
    );
}
