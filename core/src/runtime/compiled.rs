//! The on-disk cache of precompiled components.
//!
//! Compiling a component takes tens of milliseconds to seconds; loading its
//! precompiled artifact takes well under one. Artifacts are keyed by the
//! component's SHA-256 and the engine's `precompile_compatibility_hash` (so a new
//! wasmtime or different compiler settings never load an old artifact), written to
//! a temporary file and renamed into place, and checked against a recorded CRC-32
//! before every load: a corrupt or truncated entry is recompiled, never loaded.
//! (The checksum guards against corruption, not against someone who can write the
//! cache directory, who could as well replace the binary; CRC-32 with hardware
//! support checks the ~2 MB artifact of a typical biz in a fraction of the time a
//! SHA-256 takes, which matters for the 2 ms install budget.)
//! The artifact is then mapped (`deserialize_file`), so code pages are shared with
//! the page cache and only those a call touches become resident. Entries are never
//! rewritten in place (a truncated mapping faults the process): replacing one is
//! always a new file renamed over the old name.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::ComponentError;

/// How a component was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry.
    Hit,
    /// Compiled and stored (no entry existed).
    Compiled,
    /// Compiled because the entry was unusable; the reason is given.
    Recovered(String),
    /// Compiled in memory: the runtime has no cache directory.
    Uncached,
}

/// A directory of precompiled components.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    /// Opens (creating) the cache in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(CompiledCache { dir })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The artifact path for a component digest under `engine`.
    pub fn artifact_path(&self, engine: &Engine, sha256: &str) -> PathBuf {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        self.dir
            .join(format!("{sha256}-{:016x}.cwasm", hasher.finish()))
    }

    /// Loads the component with digest `sha256` from the cache, or compiles `wasm`
    /// and stores it. `sha256` must be the digest of `wasm` (the archive reader has
    /// checked it).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        wasm: &[u8],
    ) -> Result<(Component, CacheOutcome), ComponentError> {
        let path = self.artifact_path(engine, sha256);
        let sum_path = path.with_extension("cwasm.sum");
        let outcome = match self.load(engine, &path, &sum_path) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => CacheOutcome::Compiled,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "recompiling an unusable compiled-cache entry");
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(&sum_path);
                CacheOutcome::Recovered(reason)
            }
        };
        let component = compile(engine, wasm)?;
        if let Err(e) = self.store(&component, &path, &sum_path) {
            // The cache is an optimisation: a full disk costs time, not correctness.
            tracing::warn!(path = %path.display(), error = %e, "could not write a compiled-cache entry");
            return Ok((component, outcome));
        }
        // Run the stored copy, mapped, rather than the one compiled in memory: its
        // code pages are then file-backed, shared and releasable when idle
        // (`runtime/idle.rs`), as after a restart.
        // SAFETY: as in `load`: the file was written just now by `store` (temp
        // file + rename) from this engine's own serialisation.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(mapped) => Ok((mapped, outcome)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "could not map a compiled-cache entry just written");
                Ok((component, outcome))
            }
        }
    }

    /// `Ok(None)`: no entry. `Err`: an entry that must not be loaded.
    fn load(
        &self,
        engine: &Engine,
        path: &Path,
        sum_path: &Path,
    ) -> Result<Option<Component>, String> {
        let expected = match fs::read_to_string(sum_path) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if path.exists() {
                    Err("its checksum file is missing".to_owned())
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(format!("cannot read its checksum: {e}")),
        };
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        let actual = checksum(&bytes);
        if actual != expected {
            return Err(format!(
                "its checksum does not match (recorded {expected}, found {actual})"
            ));
        }
        drop(bytes);
        // SAFETY: `deserialize_file` requires a file produced by `serialize` for a
        // compatible engine that is not changed while mapped. We wrote it (temp
        // file + rename, so never partially and never in place), its name carries
        // the engine's compatibility hash, and its bytes were just checked against
        // the checksum recorded when it was written; wasmtime also checks the
        // header's engine and version. Mapping the file (rather than copying it
        // into anonymous memory) keeps code pages file-backed and lazily loaded:
        // an installed biz costs only the pages its calls touch.
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(c) => Ok(Some(c)),
            Err(e) => Err(format!("wasmtime refused it: {e:#}")),
        }
    }

    fn store(&self, component: &Component, path: &Path, sum_path: &Path) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let sum = checksum(&bytes);
        // Checksum first: a crash between the two renames leaves an artifact whose
        // checksum file disagrees or is missing, which is recompiled.
        write_atomic(&self.dir, sum_path, sum.as_bytes())?;
        write_atomic(&self.dir, path, &bytes)
    }
}

/// The recorded checksum of an artifact, algorithm-tagged so a change of
/// algorithm reads as a mismatch (and a recompile), never as a false match.
fn checksum(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
}

/// Compiles `wasm` in memory.
pub fn compile(engine: &Engine, wasm: &[u8]) -> Result<Component, ComponentError> {
    Component::new(engine, wasm).map_err(|e| ComponentError::Compile(format!("{e:#}")))
}

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
