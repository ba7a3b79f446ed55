//! Getting a blob another repository has into a target repository, shared
//! by `publish` (a base's layers) and `copy` (every blob of an image): already
//! there (`HEAD`), mounted across repositories when both are in one registry,
//! or read in ranges (digest verified) and uploaded, in chunks when large.

use crate::oci::Descriptor;
use crate::registry::{Registry, RegistryError, short};

/// Where a blob comes from.
pub struct BlobSource<'a> {
    /// The source's registry, when it is not the target's (`None`: the same
    /// registry, so a mount is tried).
    pub registry: Option<&'a Registry>,
    /// `registry/repository`, for the log.
    pub name: String,
    /// The repository in its registry.
    pub repository: &'a str,
}

/// What it took to have a blob in the target repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// The target repository had it.
    Present,
    /// Mounted from the source repository (same registry).
    Mounted,
    /// Read from the source and uploaded.
    Copied,
}

/// Makes sure `repository` of `target` has `blob`.
pub fn place_blob(
    target: &Registry,
    repository: &str,
    source: &BlobSource<'_>,
    blob: &Descriptor,
    chunk: u64,
) -> Result<Placed, RegistryError> {
    if target.has_blob(repository, &blob.digest)? {
        return Ok(Placed::Present);
    }
    let from = match source.registry {
        None => {
            if source.repository != repository
                && target.mount(repository, &blob.digest, source.repository)?
            {
                arkline_sdk::info!("mounted {} from {}", short(&blob.digest), source.name);
                return Ok(Placed::Mounted);
            }
            target
        }
        Some(registry) => registry,
    };
    arkline_sdk::info!(
        "copying {} ({} bytes) from {}",
        short(&blob.digest),
        blob.size,
        source.name
    );
    if blob.size <= chunk {
        let mut bytes = Vec::new();
        from.read_blob(
            source.repository,
            &blob.digest,
            blob.size,
            chunk,
            &mut |b| {
                bytes.extend_from_slice(b);
                Ok(())
            },
        )?;
        target.upload(repository, &blob.digest, &bytes)?;
        return Ok(Placed::Copied);
    }
    let mut upload = target.chunked(repository, &blob.digest)?;
    from.read_blob(
        source.repository,
        &blob.digest,
        blob.size,
        chunk,
        &mut |b| upload.patch(b),
    )?;
    upload.finish(&blob.digest)?;
    Ok(Placed::Copied)
}
