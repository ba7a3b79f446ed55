//! Step caches: restored from the engine's blob cache before an attempt's call,
//! saved after a success.

use super::Driver;
use crate::pipeline::logs::LogWriter;
use crate::pipeline::workspace;

/// The namespace of pipelines' step caches in an engine's blob cache (bizes
/// granted `cache` have their own, `biz/<name>`, and cannot reach it).
const STEP_CACHE_NAMESPACE: &str = "step";

impl Driver {
    pub(super) async fn restore_cache(
        &self,
        blobs: Option<&crate::host::cache::BlobCache>,
        key: &str,
        _paths: &[String],
        cap: u64,
        writer: &LogWriter,
    ) {
        let Some(blobs) = blobs.cloned() else {
            writer.note("cache: the engine has no cache store; nothing restored");
            return;
        };
        let (ws, key_owned) = (self.workspace.clone(), key.to_owned());
        let done =
            tokio::task::spawn_blocking(move || -> Result<Option<workspace::Unpacked>, String> {
                match blobs
                    .get(
                        &crate::host::BlobCache::key_in(STEP_CACHE_NAMESPACE, &key_owned)
                            .map_err(|e| e.to_string())?,
                    )
                    .map_err(|e| e.to_string())?
                {
                    Some(bytes) => workspace::unpack(&ws, &bytes, cap)
                        .map(Some)
                        .map_err(|e| e.to_string()),
                    None => Ok(None),
                }
            })
            .await;
        match done {
            Ok(Ok(Some(u))) => writer.note(&format!(
                "cache: restored key `{key}` ({} files, {} bytes)",
                u.files, u.content_bytes
            )),
            Ok(Ok(None)) => writer.note(&format!("cache: no entry for key `{key}`")),
            Ok(Err(e)) => writer.note(&format!("cache: restoring key `{key}` failed: {e}")),
            Err(e) => writer.note(&format!("cache: restore task failed: {e}")),
        }
    }

    pub(super) async fn save_cache(
        &self,
        blobs: Option<&crate::host::cache::BlobCache>,
        key: &str,
        paths: &[String],
        cap: u64,
        writer: &LogWriter,
    ) {
        let Some(blobs) = blobs.cloned() else {
            return;
        };
        let (ws, key_owned, paths) = (self.workspace.clone(), key.to_owned(), paths.to_vec());
        let done = tokio::task::spawn_blocking(move || -> Result<workspace::Packed, String> {
            let packed = workspace::pack(&ws, &paths, cap).map_err(|e| e.to_string())?;
            blobs
                .put(
                    &crate::host::BlobCache::key_in(STEP_CACHE_NAMESPACE, &key_owned)
                        .map_err(|e| e.to_string())?,
                    &packed.bytes,
                )
                .map_err(|e| e.to_string())?;
            Ok(packed)
        })
        .await;
        match done {
            Ok(Ok(p)) => {
                writer.note(&format!(
                    "cache: saved key `{key}` ({} files, {} bytes)",
                    p.files, p.content_bytes
                ));
                for s in &p.skipped {
                    writer.note(&format!("cache: skipped {s}"));
                }
            }
            Ok(Err(e)) => writer.note(&format!("cache: saving key `{key}` failed: {e}")),
            Err(e) => writer.note(&format!("cache: save task failed: {e}")),
        }
    }
}
