//! The on-disk cache of precompiled components.
//!
//! Compiling a component takes tens of milliseconds to seconds; loading its
//! precompiled artifact takes well under one. Artifacts are keyed by the
//! component's SHA-256 and the engine's `precompile_compatibility_hash` (so a new
//! wasmtime or different compiler settings never load an old artifact), written to
//! a temporary file and renamed into place, and checked against a recorded SHA-256
//! before every load: a corrupt or truncated entry is recompiled, never loaded.
//! The checked bytes are what is loaded (not a fresh mapping of the file), so a file
//! changed after the check cannot be executed or fault the process.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
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
        let sum_path = path.with_extension("cwasm.sha256");
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
        }
        Ok((component, outcome))
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
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != expected {
            return Err(format!(
                "its checksum does not match (recorded {expected}, found {actual})"
            ));
        }
        // SAFETY: `deserialize` requires bytes produced by `serialize` for a
        // compatible engine. These are the very bytes just checked against the
        // SHA-256 recorded when we wrote them (temp file + rename, so never
        // partially), under a name carrying the engine's compatibility hash;
        // wasmtime also checks the header's engine and version. Loading from the
        // checked bytes rather than mapping the file (`deserialize_file`) closes
        // the gap between check and use, and means nothing that later rewrites
        // the file in place can fault the process (SIGBUS on a truncated mapping).
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Ok(Some(c)),
            Err(e) => Err(format!("wasmtime refused it: {e:#}")),
        }
    }

    fn store(&self, component: &Component, path: &Path, sum_path: &Path) -> std::io::Result<()> {
        let bytes = component
            .serialize()
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let sum = hex::encode(Sha256::digest(&bytes));
        // Checksum first: a crash between the two renames leaves an artifact whose
        // checksum file disagrees or is missing, which is recompiled.
        write_atomic(&self.dir, sum_path, sum.as_bytes())?;
        write_atomic(&self.dir, path, &bytes)
    }
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
