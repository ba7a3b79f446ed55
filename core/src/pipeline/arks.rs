//! The container's uploaded `.ark` files, kept by digest so bizes can be
//! installed again after a restart.

use std::path::{Path, PathBuf};

use crate::ark::Ark;

/// Uploaded `.ark` files, kept by the sha256 of their bytes
/// (`<dir>/<sha256>.ark`, written to a temporary file and renamed).
#[derive(Debug, Clone)]
pub struct ArkStore {
    dir: PathBuf,
}

impl ArkStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `bytes` (an archive already read and verified) under `sha256`.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{sha256}.ark"));
        if path.exists() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}.tmp", uuid::Uuid::new_v4().simple()));
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    /// Reads and verifies the archive kept under `sha256`; its bytes must still
    /// hash to it.
    pub fn get(&self, sha256: &str) -> Result<Ark, String> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{sha256}` is not a sha256 digest"));
        }
        let path = self.dir.join(format!("{sha256}.ark"));
        let ark = Ark::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if ark.sha256 != sha256 {
            return Err(format!(
                "{} no longer hashes to its name (found {}): the file was changed; deploy the biz again",
                path.display(),
                ark.sha256
            ));
        }
        Ok(ark)
    }
}
