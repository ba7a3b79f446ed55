//! The `cache` capability: a per-engine, content-addressed blob store on disk with a
//! size cap and least-recently-used eviction.
//!
//! Layout under the engine's directory: `blobs/<sha256>` holds each distinct value
//! once; `refs/<sha256 of the key>` names the blob a key points to. Keys are
//! namespaced by the directory, one per engine, so engines never see each other's
//! entries. The pipeline-level step cache (`cache: key/paths`) uses the same store.
//! Writes go to a temporary file renamed into place; a crash leaves either the old
//! or the new entry. The index (last use, sizes) is rebuilt from the files'
//! modification times when the cache is opened.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Why a cache operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A key or value outside the limits.
    #[error("{0}")]
    InvalidArgument(String),
    /// A value larger than the cache allows.
    #[error("{0}")]
    TooLarge(String),
    /// The disk failed.
    #[error("{0}")]
    Failed(String),
}

/// The longest key accepted, in bytes.
pub const MAX_KEY: usize = 1024;

/// The longest namespace of [`BlobCache::key_in`].
pub const MAX_NAMESPACE: usize = 256;

#[derive(Debug)]
struct Entry {
    blob: String,
    size: u64,
    last_used: u64,
}

#[derive(Debug)]
struct Index {
    refs: HashMap<String, Entry>,
    /// Blob digest → number of refs pointing at it, and its size.
    blobs: HashMap<String, (usize, u64)>,
    total: u64,
    clock: u64,
}

/// One engine's blob cache. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
    cap: u64,
    index: Arc<Mutex<Index>>,
    counters: Option<Arc<crate::metrics::CacheCounters>>,
}

impl BlobCache {
    /// Opens (creating) the cache in `dir`, holding at most `cap` bytes of values.
    pub fn open(dir: impl Into<PathBuf>, cap: u64) -> Result<Self, CacheError> {
        let dir = dir.into();
        let failed = |what: &str, e: std::io::Error| {
            CacheError::Failed(format!("cannot {what} the cache at {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir.join("blobs")).map_err(|e| failed("create", e))?;
        fs::create_dir_all(dir.join("refs")).map_err(|e| failed("create", e))?;
        // Rebuild the index, oldest use first.
        let mut found: Vec<(SystemTime, String, String, u64)> = Vec::new();
        for entry in fs::read_dir(dir.join("refs")).map_err(|e| failed("read", e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(blob) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let blob = blob.trim().to_owned();
            let Ok(meta) = fs::metadata(dir.join("blobs").join(&blob)) else {
                // A ref whose blob is gone (crash between writes): drop it.
                let _ = fs::remove_file(entry.path());
                continue;
            };
            let used = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((used, name, blob, meta.len()));
        }
        found.sort();
        let mut index = Index {
            refs: HashMap::new(),
            blobs: HashMap::new(),
            total: 0,
            clock: 0,
        };
        for (_, name, blob, size) in found {
            index.clock += 1;
            let counted = index.blobs.entry(blob.clone()).or_insert((0, size));
            if counted.0 == 0 {
                index.total += size;
            }
            counted.0 += 1;
            index.refs.insert(
                name,
                Entry {
                    blob,
                    size,
                    last_used: index.clock,
                },
            );
        }
        // Blobs no ref points at (a crash between writes, or evicted refs).
        if let Ok(entries) = fs::read_dir(dir.join("blobs")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !index.blobs.contains_key(&name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let cache = BlobCache {
            dir,
            cap,
            index: Arc::new(Mutex::new(index)),
            counters: None,
        };
        cache.evict(&mut cache.lock(), 0);
        Ok(cache)
    }

    /// Counts this cache's lookups (hits and misses of [`BlobCache::get`]) into `counters`.
    pub fn with_counters(mut self, counters: Arc<crate::metrics::CacheCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    fn count(&self, hit: bool) {
        if let Some(c) = &self.counters {
            if hit { c.hit() } else { c.miss() }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of values held now.
    pub fn size(&self) -> u64 {
        self.lock().total
    }

    /// The size cap.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The key `key` takes in `namespace`: each user of an engine's cache has
    /// its own (a biz's `cache` calls `biz/<name>`, pipelines' step caches
    /// `step`), so none can read or replace another's values. A namespace has
    /// no NUL, so no key in one equals a key in another.
    ///
    /// # Errors
    /// [`CacheError::InvalidArgument`] when `key` is empty or over [`MAX_KEY`]
    /// bytes, or the namespace is empty, long or holds a NUL.
    pub fn key_in(namespace: &str, key: &str) -> Result<String, CacheError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(CacheError::InvalidArgument(format!(
                "cache keys are 1 to {MAX_KEY} bytes; this one is {}",
                key.len()
            )));
        }
        if namespace.is_empty() || namespace.len() > MAX_NAMESPACE || namespace.contains('\0') {
            return Err(CacheError::InvalidArgument(format!(
                "cache namespace `{}` is not 1 to {MAX_NAMESPACE} bytes without NUL",
                namespace.escape_debug()
            )));
        }
        Ok(format!("{namespace}\0{key}"))
    }

    fn ref_name(key: &str) -> Result<String, CacheError> {
        if key.is_empty() || key.len() > MAX_KEY + MAX_NAMESPACE + 1 {
            return Err(CacheError::InvalidArgument(format!(
                "cache keys are 1 to {MAX_KEY} bytes; this one is {}",
                key.len()
            )));
        }
        Ok(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// The value under `key`, marking it used.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let name = Self::ref_name(key)?;
        let blob = {
            let mut index = self.lock();
            index.clock += 1;
            let clock = index.clock;
            match index.refs.get_mut(&name) {
                Some(entry) => {
                    entry.last_used = clock;
                    entry.blob.clone()
                }
                None => {
                    self.count(false);
                    return Ok(None);
                }
            }
        };
        // Last use survives a restart through the ref's modification time.
        if let Ok(file) = fs::File::options()
            .append(true)
            .open(self.dir.join("refs").join(&name))
        {
            let _ = file.set_modified(SystemTime::now());
        }
        match fs::read(self.dir.join("blobs").join(&blob)) {
            Ok(bytes) => {
                self.count(true);
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.count(false);
                Ok(None)
            }
            Err(e) => Err(CacheError::Failed(format!(
                "cannot read a cache entry: {e}"
            ))),
        }
    }

    /// Stores `value` under `key`, evicting least recently used entries to stay
    /// under the cap.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), CacheError> {
        let name = Self::ref_name(key)?;
        let size = value.len() as u64;
        if size > self.cap {
            return Err(CacheError::TooLarge(format!(
                "the value is {size} bytes, over the engine's cache size of {} bytes",
                self.cap
            )));
        }
        let blob = hex::encode(Sha256::digest(value));
        let blob_path = self.dir.join("blobs").join(&blob);
        if !blob_path.exists() {
            write_atomic(&self.dir.join("blobs"), &blob_path, value)?;
        }
        write_atomic(
            &self.dir.join("refs"),
            &self.dir.join("refs").join(&name),
            blob.as_bytes(),
        )?;
        let mut index = self.lock();
        index.clock += 1;
        let clock = index.clock;
        let old = index.refs.insert(
            name.clone(),
            Entry {
                blob: blob.clone(),
                size,
                last_used: clock,
            },
        );
        let counted = index.blobs.entry(blob.clone()).or_insert((0, size));
        counted.0 += 1;
        if counted.0 == 1 {
            index.total += size;
        }
        if let Some(old) = old {
            self.release_blob(&mut index, &old.blob);
        }
        self.evict(&mut index, 0);
        Ok(())
    }

    /// Removes `key` (absent keys are fine).
    pub fn remove(&self, key: &str) -> Result<(), CacheError> {
        let name = Self::ref_name(key)?;
        let mut index = self.lock();
        if let Some(entry) = index.refs.remove(&name) {
            let _ = fs::remove_file(self.dir.join("refs").join(&name));
            self.release_blob(&mut index, &entry.blob);
        }
        Ok(())
    }

    fn release_blob(&self, index: &mut Index, blob: &str) {
        let gone = match index.blobs.get_mut(blob) {
            Some(counted) => {
                counted.0 -= 1;
                counted.0 == 0
            }
            None => false,
        };
        if gone && let Some((_, size)) = index.blobs.remove(blob) {
            index.total -= size;
            let _ = fs::remove_file(self.dir.join("blobs").join(blob));
        }
    }

    /// Evicts least recently used refs until `total + incoming` fits the cap.
    fn evict(&self, index: &mut Index, incoming: u64) {
        if index.total + incoming <= self.cap {
            return;
        }
        let order: BTreeMap<u64, String> = index
            .refs
            .iter()
            .map(|(name, e)| (e.last_used, name.clone()))
            .collect();
        for (_, name) in order {
            if index.total + incoming <= self.cap {
                break;
            }
            if let Some(entry) = index.refs.remove(&name) {
                let _ = fs::remove_file(self.dir.join("refs").join(&name));
                tracing::debug!(size = entry.size, "cache entry evicted");
                self.release_blob(index, &entry.blob);
            }
        }
    }
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| CacheError::Failed(e.to_string()))?;
    let tmp = dir.join(format!(".tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CacheError::Failed(format!("cannot write a cache entry: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_counted_as_hits_and_misses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counters = Arc::new(crate::metrics::CacheCounters::default());
        let cache = BlobCache::open(dir.path(), 1 << 20)
            .expect("opens")
            .with_counters(counters.clone());
        assert_eq!(cache.get("a").expect("get"), None);
        cache.put("a", b"x").expect("put");
        assert!(cache.get("a").expect("get").is_some());
        assert!(cache.get("a").expect("get").is_some());
        assert!(cache.get("").is_err(), "a bad key is neither");
        assert_eq!(counters.get(), (2, 1));
    }

    #[test]
    fn put_get_remove_and_dedup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 1 << 20).expect("opens");
        assert_eq!(cache.get("a").expect("get"), None);
        cache.put("a", b"same").expect("put");
        cache.put("b", b"same").expect("put");
        assert_eq!(cache.get("a").expect("get").as_deref(), Some(&b"same"[..]));
        assert_eq!(cache.size(), 4, "one blob for two keys");
        cache.remove("a").expect("remove");
        assert_eq!(cache.get("a").expect("get"), None);
        assert_eq!(cache.get("b").expect("get").as_deref(), Some(&b"same"[..]));
        cache.put("b", b"other").expect("overwrite");
        assert_eq!(cache.size(), 5);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs"))
                .expect("ls")
                .count(),
            1
        );
        assert!(matches!(cache.get(""), Err(CacheError::InvalidArgument(_))));
    }

    #[test]
    fn least_recently_used_entries_go_first_and_the_index_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = BlobCache::open(dir.path(), 10).expect("opens");
        cache.put("one", b"1111").expect("put");
        cache.put("two", b"2222").expect("put");
        cache.get("one").expect("get"); // "two" is now the least recently used
        cache.put("three", b"3333").expect("put");
        assert!(cache.get("two").expect("get").is_none(), "evicted");
        assert!(cache.get("one").expect("get").is_some());
        assert!(cache.get("three").expect("get").is_some());
        assert!(cache.size() <= 10);
        assert!(matches!(
            cache.put("big", &[0u8; 11]),
            Err(CacheError::TooLarge(_))
        ));
        drop(cache);
        let reopened = BlobCache::open(dir.path(), 10).expect("reopens");
        assert_eq!(reopened.size(), 8);
        assert_eq!(
            reopened.get("one").expect("get").as_deref(),
            Some(&b"1111"[..])
        );
        // A smaller cap on reopening evicts down to it.
        drop(reopened);
        let smaller = BlobCache::open(dir.path(), 4).expect("reopens");
        assert!(smaller.size() <= 4);
    }
}
