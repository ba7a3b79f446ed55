//! Finished step logs shipped to an object store every node reaches, so a
//! log outlives the node that wrote it (issue 21): `file://` (a directory on
//! a shared file system) is built in; `s3://bucket/prefix` needs the `s3`
//! cargo feature. One object per step, `<engine>/<execution>/<step>.jsonl`,
//! one [`StoredLine`] per line, every attempt's lines (those of attempts
//! written on another node before a takeover are kept).

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use super::{LogError, LogKey, StoredLine};
use crate::pipeline::remote::Remote;

/// Where finished step logs are shipped.
#[derive(Debug, Clone)]
pub struct LogArchive {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    url: String,
}

impl LogArchive {
    /// The archive at `url`: `file:///absolute/dir` (created when missing),
    /// or `s3://bucket[/prefix]` with the `s3` feature (credentials and
    /// region from the usual `AWS_*` environment variables).
    ///
    /// # Errors
    ///
    /// [`LogError::Archive`] for a URL that does not parse, a scheme this
    /// build does not support, or a directory that cannot be created.
    pub fn open(url: &str) -> Result<Self, LogError> {
        Self::open_with(url, Remote::env_options())
    }

    /// [`LogArchive::open`] with the store's options given (for S3:
    /// `aws_endpoint`, `aws_region`, `aws_access_key_id`, … as `object_store`
    /// names them) instead of read from the environment.
    ///
    /// # Errors
    ///
    /// As [`LogArchive::open`].
    pub fn open_with(url: &str, options: Vec<(String, String)>) -> Result<Self, LogError> {
        let remote = Remote::open(url, options).map_err(|message| LogError::Archive {
            url: url.to_owned(),
            message,
        })?;
        Ok(Self {
            store: remote.store,
            root: remote.root,
            url: remote.url,
        })
    }

    /// The archive's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &LogKey) -> ObjectPath {
        self.prefix(&[&key.engine, &key.execution])
            .clone()
            .join(format!("{}.jsonl", key.step))
    }

    fn prefix(&self, parts: &[&str]) -> ObjectPath {
        parts
            .iter()
            .fold(self.root.clone(), |path, part| path.join(*part))
    }

    fn error(&self, message: String) -> LogError {
        LogError::Archive {
            url: self.url.clone(),
            message,
        }
    }

    /// Ships `lines` as `key`'s log, keeping the lines of attempts that are
    /// in the archive but not in `lines` (written on another node before
    /// this one resumed the step).
    pub async fn put(&self, key: &LogKey, lines: &[StoredLine]) -> Result<(), LogError> {
        let mut all: Vec<StoredLine> = match self.get(key).await? {
            Some(earlier) => earlier
                .into_iter()
                .filter(|l| !lines.iter().any(|m| m.attempt == l.attempt))
                .collect(),
            None => Vec::new(),
        };
        all.extend_from_slice(lines);
        all.sort_by_key(|l| (l.attempt, l.seq));
        let mut body = Vec::new();
        for line in &all {
            serde_json::to_writer(&mut body, line)
                .map_err(|e| self.error(format!("cannot encode a line: {e}")))?;
            body.push(b'\n');
        }
        self.store
            .put(&self.path(key), PutPayload::from(body))
            .await
            .map_err(|e| self.error(format!("cannot ship the log of step {key}: {e}")))?;
        Ok(())
    }

    /// `key`'s shipped log; `None` when none was shipped.
    pub async fn get(&self, key: &LogKey) -> Result<Option<Vec<StoredLine>>, LogError> {
        let bytes = match self.store.get(&self.path(key)).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| self.error(format!("cannot read the log of step {key}: {e}")))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => {
                return Err(self.error(format!("cannot read the log of step {key}: {e}")));
            }
        };
        let mut lines = Vec::new();
        for (n, text) in bytes.split(|b| *b == b'\n').enumerate() {
            if text.is_empty() {
                continue;
            }
            let line = serde_json::from_slice(text).map_err(|e| {
                self.error(format!(
                    "the shipped log of step {key} is corrupt at line {}: {e}",
                    n + 1
                ))
            })?;
            lines.push(line);
        }
        Ok(Some(lines))
    }

    /// Removes every shipped log under `engine` (and `execution`, if given).
    pub async fn remove(&self, engine: &str, execution: Option<&str>) -> Result<(), LogError> {
        use futures::TryStreamExt as _;
        let prefix = match execution {
            Some(execution) => self.prefix(&[engine, execution]),
            None => self.prefix(&[engine]),
        };
        let found: Vec<_> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.error(format!("cannot list {prefix}: {e}")))?;
        for location in found {
            match self.store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(format!("cannot remove {location}: {e}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(attempt: u32, seq: u64, message: &str) -> StoredLine {
        StoredLine {
            seq,
            time: chrono::Utc::now(),
            attempt,
            level: "info".into(),
            source: "stdout".into(),
            message: message.into(),
            fields: vec![],
        }
    }

    #[tokio::test]
    async fn shipped_logs_keep_other_attempts_and_go_with_their_execution() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(dir.path().join("logs"))
            .expect("a file URL")
            .to_string();
        check_archive(LogArchive::open(&url).expect("opens")).await;

        let bad = LogArchive::open("ftp://example.com/x").expect_err("refused");
        assert!(bad.to_string().contains("ftp://example.com/x"), "{bad}");
        let relative = LogArchive::open("logs/here").expect_err("refused");
        assert!(relative.to_string().contains("file:///"), "{relative}");
    }

    /// The same on a real S3-compatible server (`moto_server`).
    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn shipped_logs_on_an_s3_compatible_server() {
        let server = arkline_testkit::s3::S3Server::start();
        server.create_bucket("arkline-logs");
        let archive = LogArchive::open_with("s3://arkline-logs/team/logs", server.client_options())
            .expect("opens");
        check_archive(archive).await;
    }

    async fn check_archive(archive: LogArchive) {
        let key = LogKey::new("eng", "exec-1", "build").expect("key");
        assert_eq!(archive.get(&key).await.expect("reads"), None);

        // Attempt 1 on a node that died, then attempt 2 on the next one.
        archive
            .put(&key, &[line(1, 0, "first node")])
            .await
            .expect("ships");
        archive
            .put(&key, &[line(2, 0, "second node"), line(2, 1, "done")])
            .await
            .expect("ships");
        let lines = archive.get(&key).await.expect("reads").expect("shipped");
        let messages: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["first node", "second node", "done"]);

        let other = LogKey::new("eng", "exec-2", "build").expect("key");
        archive
            .put(&other, &[line(1, 0, "x")])
            .await
            .expect("ships");
        archive
            .remove("eng", Some("exec-1"))
            .await
            .expect("removes");
        assert_eq!(archive.get(&key).await.expect("reads"), None);
        assert!(archive.get(&other).await.expect("reads").is_some());
        archive.remove("eng", None).await.expect("removes");
        assert_eq!(archive.get(&other).await.expect("reads"), None);
    }
}
