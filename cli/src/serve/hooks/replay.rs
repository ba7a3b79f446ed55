//! Replay protection: the delivery ids a forge sends (`X-GitHub-Delivery`,
//! GitLab's `Idempotency-Key` or `X-Gitlab-Event-UUID`) are remembered in the
//! engine's store, as objects of kind [`KIND`], for a window (72 h by default).
//! A delivery seen again within it starts nothing, across server restarts.
//!
//! A delivery is *claimed* before its execution is created: the store's
//! `create` refuses a name that exists, so of two copies arriving together
//! exactly one wins. The claim then records the execution it started, or is
//! released when starting it failed (so the forge's retry can succeed).
//! Records older than the window are ignored when looked up and deleted by
//! [`sweep`], which `arkline serve` runs periodically.

use std::sync::Arc;
use std::time::Duration;

use arkline::model::{API_VERSION, DynamicObject, ObjectMeta};
use arkline::store::{DeleteOptions, ListQuery, ObjectRef, Store, StoreError};
use chrono::Utc;
use serde_json::json;
use sha2::Digest as _;

/// The kind of the stored delivery records.
pub const KIND: &str = "WebhookDelivery";

/// How long delivery ids are remembered unless configured: GitHub lets users
/// redeliver for 3 days.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(72 * 3600);

/// The longest delivery id remembered; longer ones are not a forge's.
pub const MAX_ID_LEN: usize = 128;

/// The outcome of [`claim`].
#[derive(Debug)]
pub enum Claim {
    /// First time within the window: this request may start an execution, and
    /// records it with [`record`] (or gives the claim up with [`release`]).
    New(Box<DynamicObject>),
    /// Seen within the window; the execution it started, when it is known (a
    /// copy arriving while the first is still being handled has none yet).
    Seen {
        /// The name of the execution the first copy started.
        execution: Option<String>,
    },
}

/// The store name of a delivery: a digest, so that any id fits the store's
/// naming rules and the same id sent to two pipelines counts apart.
fn object_name(source: &str, pipeline: &str, id: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{source}\0{pipeline}\0{id}"));
    format!("{source}-{}", hex::encode(&digest[..20]))
}

fn expired(obj: &DynamicObject, window: Duration) -> bool {
    let Some(created) = obj.metadata.created else {
        return true;
    };
    let age = Utc::now().signed_duration_since(created);
    age.to_std().is_ok_and(|age| age > window)
}

fn execution_of(obj: &DynamicObject) -> Option<String> {
    obj.spec
        .get("execution")
        .and_then(serde_json::Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
}

/// Claims delivery `id` of `source` (a forge's
/// [`Provider::as_str`](super::delivery::Provider::as_str), or `registry`) for
/// `pipeline` in `engine`.
///
/// # Errors
/// When the store fails.
pub async fn claim(
    store: &Arc<dyn Store>,
    engine: &str,
    pipeline: &str,
    source: &str,
    id: &str,
    window: Duration,
) -> Result<Claim, StoreError> {
    let key = ObjectRef::new(KIND, engine, object_name(source, pipeline, id));
    // Two rounds at most: an expired record is removed, then the name is taken.
    for _ in 0..2 {
        if let Some(seen) = store.get(&key).await? {
            if !expired(&seen, window) {
                return Ok(Claim::Seen {
                    execution: execution_of(&seen),
                });
            }
            let options = DeleteOptions::default().resource_version(seen.metadata.resource_version);
            match store.delete(&key, &options).await {
                Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let record = DynamicObject {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta::new(engine, key.name.clone()),
            spec: json!({
                "provider": source,
                "pipeline": pipeline,
                "delivery": id,
                "execution": "",
            }),
            status: serde_json::Value::Null,
        };
        match store.create(record).await {
            Ok(created) => return Ok(Claim::New(Box::new(created))),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    // Created by another request between our reads: it is that one's delivery.
    Ok(Claim::Seen { execution: None })
}

/// Records the execution a claimed delivery started.
///
/// # Errors
/// When the store fails.
pub async fn record(
    store: &Arc<dyn Store>,
    mut claimed: Box<DynamicObject>,
    execution: &str,
) -> Result<(), StoreError> {
    claimed.spec["execution"] = json!(execution);
    store.update(*claimed).await.map(|_| ())
}

/// Gives a claim up (starting the execution failed), so a retry may start it.
///
/// # Errors
/// When the store fails.
pub async fn release(store: &Arc<dyn Store>, claimed: &DynamicObject) -> Result<(), StoreError> {
    let key = ObjectRef::new(KIND, &claimed.metadata.engine, &claimed.metadata.name);
    match store.delete(&key, &DeleteOptions::default()).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the records older than `window`, in every engine; answers how many.
///
/// # Errors
/// When the store fails.
pub async fn sweep(store: &Arc<dyn Store>, window: Duration) -> Result<usize, StoreError> {
    let list = store.list(&ListQuery::kind(KIND)).await?;
    let mut removed = 0;
    for obj in list.items.iter().filter(|o| expired(o, window)) {
        let key = ObjectRef::new(KIND, &obj.metadata.engine, &obj.metadata.name);
        let options = DeleteOptions::default().resource_version(obj.metadata.resource_version);
        match store.delete(&key, &options).await {
            Ok(_) => removed += 1,
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Runs [`sweep`] now and then every hour (or every `window`, when shorter),
/// forever; failures are logged and retried at the next round.
pub async fn sweep_periodically(store: Arc<dyn Store>, window: Duration) {
    let every = window.min(Duration::from_secs(3600));
    loop {
        match sweep(&store, window).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "forgot expired webhook deliveries"),
            Err(e) => tracing::warn!(error = %e, "cannot forget expired webhook deliveries"),
        }
        tokio::time::sleep(every).await;
    }
}
