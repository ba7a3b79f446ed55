//! # native-kv
//!
//! An example arkline native plugin: a small in-memory key-value service that
//! steps reach through the `host-call` capability (`host-call=kv.get,kv.put`).
//!
//! **Native plugins are trusted code and are not isolated.** This library runs in
//! the host process with the host's privileges and memory; nothing sandboxes it the
//! way a biz's WebAssembly component is sandboxed. Load only plugins you would link
//! into the host yourself.
//!
//! The store lives in the process: one per loaded library, shared by every engine
//! and step that is granted its handlers, and gone when the process exits.
//!
//! ## Handlers
//! Requests and replies are JSON objects (UTF-8). Values are any JSON value.
//!
//! | handler | request | reply |
//! |---|---|---|
//! | `kv.put` | `{"key": "k", "value": <any>}` | `{"previous": <any or null>}` |
//! | `kv.get` | `{"key": "k"}` | `{"found": true, "value": <any>}` or `{"found": false, "value": null}` |
//! | `kv.delete` | `{"key": "k"}` | `{"deleted": true}` or `{"deleted": false}` |
//! | `kv.list` | `{"prefix": "p"}`, `{}` or an empty payload | `{"keys": ["p1", "p2"]}`, sorted |
//! | `kv.panic` | anything | never replies: panics, to exercise the host's panic boundary |
//!
//! Keys are non-empty strings. A malformed request fails the call with a message
//! naming the handler and the expected shape.
//!
//! ## Building
//! `cargo build -p native-kv` produces `target/debug/libnative_kv.so` (a `cdylib`).
//! It declares the ABI version of its `abi` module (1.0.0) unless the environment
//! variable `ARKLINE_NATIVE_KV_ABI` is set at build time, which tests use to build
//! a copy the host must refuse.

#![deny(missing_docs)]

mod abi;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The ABI version this build declares (overridable at build time, for tests).
const ABI: &str = match option_env!("ARKLINE_NATIVE_KV_ABI") {
    Some(abi) => abi,
    None => abi::ABI_VERSION,
};

abi::export_plugin!(abi: ABI, init: plugin);

fn plugin() -> abi::Plugin {
    let store = Store::default();
    abi::Plugin::new("native-kv", env!("CARGO_PKG_VERSION"))
        .handler("kv.get", store.serve("kv.get", Store::get))
        .handler("kv.put", store.serve("kv.put", Store::put))
        .handler("kv.delete", store.serve("kv.delete", Store::delete))
        .handler("kv.list", store.serve("kv.list", Store::list))
        .handler("kv.panic", |payload| {
            panic!(
                "kv.panic called with {} byte(s): this handler always panics",
                payload.len()
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    key: String,
    value: Value,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListRequest {
    #[serde(default)]
    prefix: String,
}

/// The expected request shape of each handler, for error messages.
fn shape(handler: &str) -> &'static str {
    match handler {
        "kv.put" => r#"{"key": "<non-empty string>", "value": <any JSON>}"#,
        "kv.list" => r#"{"prefix": "<string>"}, {} or an empty payload"#,
        _ => r#"{"key": "<non-empty string>"}"#,
    }
}

#[derive(Clone, Default)]
struct Store {
    entries: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Store {
    /// A handler that decodes the JSON request, runs `op` and encodes its reply.
    fn serve<R: DeserializeOwned + 'static>(
        &self,
        handler: &'static str,
        op: fn(&Store, R) -> Result<Value, String>,
    ) -> impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static {
        let store = self.clone();
        move |payload| {
            // An empty payload reads as `{}`, which only `kv.list` accepts.
            let payload = if payload.is_empty() { b"{}" } else { payload };
            let request = serde_json::from_slice(payload).map_err(|e| {
                format!(
                    "{handler}: invalid request ({e}); expected {}",
                    shape(handler)
                )
            })?;
            let reply = op(&store, request).map_err(|e| format!("{handler}: {e}"))?;
            serde_json::to_vec(&reply).map_err(|e| format!("{handler}: cannot encode reply: {e}"))
        }
    }

    /// The map; a panic elsewhere while it was held leaves it consistent, since
    /// every update is a single map operation.
    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Value>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, request: KeyRequest) -> Result<Value, String> {
        let key = checked(request.key)?;
        Ok(match self.entries().get(&key) {
            Some(value) => json!({ "found": true, "value": value }),
            None => json!({ "found": false, "value": null }),
        })
    }

    fn put(&self, request: PutRequest) -> Result<Value, String> {
        let key = checked(request.key)?;
        let previous = self.entries().insert(key, request.value);
        Ok(json!({ "previous": previous }))
    }

    fn delete(&self, request: KeyRequest) -> Result<Value, String> {
        let key = checked(request.key)?;
        let deleted = self.entries().remove(&key).is_some();
        Ok(json!({ "deleted": deleted }))
    }

    fn list(&self, request: ListRequest) -> Result<Value, String> {
        let keys: Vec<String> = self
            .entries()
            .range(request.prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&request.prefix))
            .map(|(key, _)| key.clone())
            .collect();
        Ok(json!({ "keys": keys }))
    }
}

fn checked(key: String) -> Result<String, String> {
    if key.is_empty() {
        Err("the key is empty; keys are non-empty strings".to_owned())
    } else {
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<R: DeserializeOwned + 'static>(
        store: &Store,
        op: fn(&Store, R) -> Result<Value, String>,
        handler: &'static str,
        request: &str,
    ) -> Result<Value, String> {
        let reply = store.serve(handler, op)(request.as_bytes())?;
        Ok(serde_json::from_slice(&reply).expect("replies are JSON"))
    }

    #[test]
    fn put_get_list_delete_round_trip() {
        let s = Store::default();
        let put = |req: &str| call(&s, Store::put, "kv.put", req);
        assert_eq!(
            put(r#"{"key":"a","value":1}"#),
            Ok(json!({"previous": null}))
        );
        assert_eq!(
            put(r#"{"key":"a","value":{"x":2}}"#),
            Ok(json!({"previous": 1}))
        );
        put(r#"{"key":"ab","value":"s"}"#).expect("put");
        put(r#"{"key":"b","value":null}"#).expect("put");
        assert_eq!(
            call(&s, Store::get, "kv.get", r#"{"key":"a"}"#),
            Ok(json!({"found": true, "value": {"x": 2}}))
        );
        assert_eq!(
            call(&s, Store::list, "kv.list", r#"{"prefix":"a"}"#),
            Ok(json!({"keys": ["a", "ab"]}))
        );
        assert_eq!(
            call(&s, Store::list, "kv.list", ""),
            Ok(json!({"keys": ["a", "ab", "b"]}))
        );
        assert_eq!(
            call(&s, Store::delete, "kv.delete", r#"{"key":"a"}"#),
            Ok(json!({"deleted": true}))
        );
        assert_eq!(
            call(&s, Store::delete, "kv.delete", r#"{"key":"a"}"#),
            Ok(json!({"deleted": false}))
        );
        assert_eq!(
            call(&s, Store::get, "kv.get", r#"{"key":"a"}"#),
            Ok(json!({"found": false, "value": null}))
        );
    }

    #[test]
    fn malformed_requests_name_the_handler_and_the_expected_shape() {
        let s = Store::default();
        let err = call(&s, Store::get, "kv.get", "not json").expect_err("malformed");
        assert!(err.starts_with("kv.get: invalid request ("), "{err}");
        assert!(
            err.ends_with(r#"expected {"key": "<non-empty string>"}"#),
            "{err}"
        );
        let err = call(&s, Store::put, "kv.put", r#"{"key":"a"}"#).expect_err("no value");
        assert!(err.contains("missing field `value`"), "{err}");
        let err = call(&s, Store::get, "kv.get", r#"{"key":""}"#).expect_err("empty key");
        assert_eq!(err, "kv.get: the key is empty; keys are non-empty strings");
    }
}
