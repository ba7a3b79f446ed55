//! The container's uploaded `.ark` files, kept by digest so bizes can be
//! installed again after a restart, and by any node of a cluster.

use std::path::{Path, PathBuf};

use object_store::{ObjectStoreExt as _, PutPayload};

use crate::ark::Ark;
use crate::pipeline::remote::Remote;

/// Uploaded `.ark` files, kept by the sha256 of their bytes
/// (`<dir>/<sha256>.ark`, written to a temporary file and renamed). With a
/// remote store ([`ArkStore::with_remote`], e.g. `s3://bucket/arks`), every
/// archive kept is uploaded there too, and one missing from the directory is
/// fetched from there: the nodes of a cluster share their archives without
/// sharing a file system.
#[derive(Debug, Clone)]
pub struct ArkStore {
    dir: PathBuf,
    remote: Option<Remote>,
}

impl ArkStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            remote: None,
        }
    }

    /// Shares the archives through the object store at `url` (options as
    /// [`Remote::open`] takes them; `AWS_*` from the environment when
    /// `options` is `None`).
    ///
    /// # Errors
    ///
    /// What is wrong with the URL, or the scheme this build does not read.
    pub fn with_remote(
        mut self,
        url: &str,
        options: Option<Vec<(String, String)>>,
    ) -> Result<Self, String> {
        self.remote = Some(Remote::open(
            url,
            options.unwrap_or_else(Remote::env_options),
        )?);
        Ok(self)
    }

    /// Where the archives are kept, for messages: the directory, and the
    /// remote store's URL.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(remote) => format!("{} and {}", self.dir.display(), remote.url),
            None => self.dir.display().to_string(),
        }
    }

    /// Keeps `bytes` (an archive already read and verified) under `sha256`,
    /// in the directory and the remote store.
    pub async fn put(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
        let (dir, digest, owned) = (self.dir.clone(), sha256.to_owned(), bytes.to_vec());
        let written = tokio::task::spawn_blocking(move || write_file(&dir, &digest, &owned))
            .await
            .map_err(std::io::Error::other)?;
        written?;
        if let Some(remote) = &self.remote {
            remote
                .store
                .put(
                    &remote.path(&[&format!("{sha256}.ark")]),
                    PutPayload::from(bytes.to_vec()),
                )
                .await
                .map_err(|e| std::io::Error::other(format!("{}: {e}", remote.url)))?;
        }
        Ok(())
    }

    /// Reads and verifies the archive kept under `sha256`; its bytes must still
    /// hash to it. Fetched from the remote store (and kept in the directory)
    /// when the directory lacks it.
    pub async fn get(&self, sha256: &str) -> Result<Ark, String> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{sha256}` is not a sha256 digest"));
        }
        let path = self.dir.join(format!("{sha256}.ark"));
        if !path.exists()
            && let Some(remote) = &self.remote
        {
            let location = remote.path(&[&format!("{sha256}.ark")]);
            let bytes = match remote.store.get(&location).await {
                Ok(found) => found
                    .bytes()
                    .await
                    .map_err(|e| format!("{}: cannot read {location}: {e}", remote.url))?,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(format!(
                        "archive {sha256} is neither in {} nor in {}: deploy the biz again",
                        self.dir.display(),
                        remote.url
                    ));
                }
                Err(e) => return Err(format!("{}: cannot read {location}: {e}", remote.url)),
            };
            let (dir, digest) = (self.dir.clone(), sha256.to_owned());
            tokio::task::spawn_blocking(move || write_file(&dir, &digest, &bytes))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot keep {sha256} in {}: {e}", self.dir.display()))?;
        }
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

/// Writes `<dir>/<sha256>.ark` (temporary file, fsync, rename) unless it
/// exists.
fn write_file(dir: &Path, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{sha256}.ark"));
    if path.exists() {
        return Ok(());
    }
    let tmp = dir.join(format!(".{sha256}.{}.tmp", uuid::Uuid::new_v4().simple()));
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component-less archive is enough: `get` checks only the digest.
    fn some_ark() -> (String, Vec<u8>) {
        let bytes = std::fs::read(arkline_testkit::plugin("faults")).expect("faults");
        let ark = Ark::from_bytes(&bytes).expect("reads");
        (ark.sha256.clone(), bytes)
    }

    async fn shared_through(url: &str, options: Vec<(String, String)>) {
        let (digest, bytes) = some_ark();
        let (a, b) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let first = ArkStore::new(a.path())
            .with_remote(url, Some(options.clone()))
            .expect("opens");
        let second = ArkStore::new(b.path())
            .with_remote(url, Some(options))
            .expect("opens");
        let missing = second.get(&digest).await.expect_err("not kept yet");
        assert!(missing.contains("deploy the biz again"), "{missing}");
        first.put(&digest, &bytes).await.expect("keeps");
        // The other node has no copy in its directory: fetched, then kept.
        let fetched = second.get(&digest).await.expect("fetched");
        assert_eq!(fetched.sha256, digest);
        assert!(b.path().join(format!("{digest}.ark")).exists());
    }

    #[tokio::test]
    async fn archives_are_shared_through_a_remote_directory() {
        let shared = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(shared.path())
            .expect("url")
            .to_string();
        shared_through(&url, vec![]).await;
        let bad = ArkStore::new("x")
            .with_remote("s4://nope", Some(vec![]))
            .expect_err("refused");
        assert!(bad.contains("s3://"), "{bad}");
    }

    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn archives_are_shared_through_an_s3_compatible_server() {
        let server = arkline_testkit::s3::S3Server::start();
        server.create_bucket("arkline-arks");
        shared_through("s3://arkline-arks/arks", server.client_options()).await;
    }
}
