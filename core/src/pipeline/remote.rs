//! Object stores every node of a cluster reads (through `object_store`):
//! where finished step logs ([`LogArchive`](crate::pipeline::LogArchive))
//! and uploaded archives ([`ArkStore`](crate::pipeline::ArkStore)) are kept
//! when the nodes share no file system. `file://` is built in; `s3://` needs
//! the `s3` cargo feature.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

/// A store at a URL, and the path its URL names inside it.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The URL's path in it (the prefix everything goes under).
    pub root: ObjectPath,
    /// The URL, for messages.
    pub url: String,
}

impl Remote {
    /// Opens `url` (`file:///absolute/dir`, created when missing, or
    /// `s3://bucket[/prefix]`) with `options` (for S3: `aws_endpoint`,
    /// `aws_region`, `aws_access_key_id`, … as `object_store` names them).
    /// The error says what is wrong and what to write.
    pub fn open(url: &str, options: Vec<(String, String)>) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| {
            format!("not a URL ({e}): write file:///shared/dir or s3://bucket/prefix")
        })?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| "a file URL needs an absolute path".to_owned())?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let (store, root) = object_store::parse_url_opts(&parsed, options).map_err(|e| {
            format!(
                "{e} (this build reads file:// URLs{})",
                if cfg!(feature = "s3") {
                    " and s3:// URLs"
                } else {
                    "; s3:// needs the `s3` feature"
                }
            )
        })?;
        Ok(Self {
            store: Arc::from(store),
            root,
            url: url.to_owned(),
        })
    }

    /// The `AWS_*` environment variables, as options for [`Remote::open`].
    pub fn env_options() -> Vec<(String, String)> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    }

    /// `root/part/part/…`.
    pub fn path(&self, parts: &[&str]) -> ObjectPath {
        parts
            .iter()
            .fold(self.root.clone(), |path, part| path.join(*part))
    }
}
