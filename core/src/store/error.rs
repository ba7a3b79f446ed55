//! Errors of the store.

use std::path::PathBuf;

use super::{ObjectRef, Revision, SelectorError};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist.
    #[error("{key} not found: create it first, or check kind, engine and name")]
    NotFound {
        /// The missing object.
        key: ObjectRef,
    },

    /// An object with this name already exists.
    #[error("{key} already exists: update it instead, or pick another name")]
    AlreadyExists {
        /// The existing object.
        key: ObjectRef,
    },

    /// Compare-and-swap failed: the object was written since it was read.
    #[error(
        "conflict writing {key}: expected resource_version {expected} but the store has {actual}; \
         get the object again, reapply the change and retry"
    )]
    Conflict {
        /// The object written.
        key: ObjectRef,
        /// The `resource_version` the caller sent.
        expected: Revision,
        /// The object's current `resource_version`.
        actual: Revision,
    },

    /// Events after the requested revision were compacted.
    #[error(
        "watch from revision {requested} is gone: events up to revision {compacted} were compacted; \
         list again and watch from the list's revision"
    )]
    Gone {
        /// The revision the watch asked to start after.
        requested: Revision,
        /// Events at or before this revision are gone.
        compacted: Revision,
    },

    /// The object sent is malformed.
    #[error("invalid {kind} {name:?}: {reason}")]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },

    /// A label selector did not parse.
    #[error(transparent)]
    Selector(#[from] SelectorError),

    /// A typed object did not convert to or from its stored form.
    #[error("cannot convert {kind} {name:?} to or from its stored JSON form: {source}")]
    Conversion {
        /// Kind of the object.
        kind: String,
        /// Name of the object (empty when unknown).
        name: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// The store file was written by a newer arkline.
    #[error(
        "store {path} has schema version {found}, newer than the {supported} this arkline supports: \
         upgrade arkline to open it"
    )]
    NewerSchema {
        /// The store file.
        path: PathBuf,
        /// Schema version found in the file.
        found: u32,
        /// Newest schema version this build knows.
        supported: u32,
    },

    /// A stored record could not be decoded (the file is damaged or was edited).
    #[error(
        "corrupt record {record} in store {path}: {reason}; restore the data dir from a backup"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// Which record.
        record: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The data dir could not be prepared.
    #[error("cannot use data dir {path}: {source}; check that it exists and is writable")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The store file is already open (in this process or another).
    #[error(
        "store {path} is already open in another arkline process or store handle: \
         stop that process, close the other handle, or use another data dir"
    )]
    Locked {
        /// The store file.
        path: PathBuf,
    },

    /// The storage backend failed.
    #[error("store backend failed to {operation} on {path}: {source}")]
    Backend {
        /// What the store was doing, e.g. `commit a write batch`.
        operation: &'static str,
        /// The store file (or endpoint).
        path: PathBuf,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The etcd cluster could not be reached, or failed a request.
    #[error(
        "etcd at {endpoints} failed to {operation}: {cause}; check that the members are up, \
         reachable from this host, and that the endpoints (and TLS or user options) are right"
    )]
    Etcd {
        /// What the store was doing, e.g. `commit a write`.
        operation: &'static str,
        /// The client URLs, comma-separated.
        endpoints: String,
        /// The client's error (in the message; not repeated as a source).
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A fenced store's write was refused: the registration it is fenced on
    /// (this node's lease) is gone, so another node may own the work now.
    #[error(
        "write refused: this node's registration {holder} is gone (its lease was revoked or \
         expired), so another node may own this work now; the node writes nothing more — \
         restart it to register again"
    )]
    Fenced {
        /// The registration key the writes were fenced on.
        holder: String,
    },

    /// The store refuses a backend location (wrong version, a key prefix
    /// owned by something else); nothing was written.
    #[error("refusing {location}: {reason}")]
    Refused {
        /// The cluster and prefix, or the file.
        location: String,
        /// Why, and what to do.
        reason: String,
    },

    /// The store was shut down (its writer stopped).
    #[error("store {path} is closed: its writer stopped; reopen the store")]
    Closed {
        /// The store file.
        path: PathBuf,
    },
}

impl StoreError {
    /// True for [`StoreError::Conflict`]: re-read and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// True for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// True for [`StoreError::Gone`]: relist, then watch again.
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Gone { .. })
    }
}
