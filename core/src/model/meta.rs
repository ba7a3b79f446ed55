//! Object metadata shared by every resource kind (Kubernetes-shaped).
//!
//! This file is the agreed contract between `model` and `store`: keep names and
//! types exactly; you may add derives, docs, helper methods and extra optional fields.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `apiVersion` every arkline resource carries.
pub const API_VERSION: &str = "arkline.dev/v1alpha1";

/// Longest object name (and engine name), in bytes, that the store keeps.
pub const MAX_NAME_LEN: usize = 253;

/// Why a name cannot name a stored object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("is {0} bytes long; at most {max} are allowed", max = MAX_NAME_LEN)]
    TooLong(usize),
    /// The name contains `/`, which separates the parts of storage keys and paths.
    #[error("contains `/`")]
    Slash,
    /// The name contains a control character (NUL, newline, escape, …).
    #[error("contains the control character {0:?}")]
    Control(char),
}

/// The rule every stored object's name and engine follow (the store refuses
/// others): 1 to [`MAX_NAME_LEN`] bytes, no `/`, no control characters. The
/// pipeline parser applies it to a file's `name` and `engine`, so
/// `arkline validate` refuses what the API would.
///
/// ```
/// use arkline::model::{NameError, check_object_name};
///
/// assert!(check_object_name("build-and-deploy").is_ok());
/// assert_eq!(check_object_name("../../etc/passwd"), Err(NameError::Slash));
/// assert_eq!(check_object_name("a\0b"), Err(NameError::Control('\0')));
/// assert_eq!(check_object_name(&"x".repeat(254)), Err(NameError::TooLong(254)));
/// ```
///
/// # Errors
///
/// The first part of the rule the name breaks.
pub fn check_object_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    match name.chars().find(|c| c.is_control()) {
        Some(c) => Err(NameError::Control(c)),
        None => Ok(()),
    }
}

/// Metadata of a stored object. Fields the store owns (`uid`, `resource_version`,
/// `generation`, `created`, `deletion_requested`) are ignored on create and set by the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name, unique per (engine, kind).
    pub name: String,
    /// The engine (namespace) the object belongs to.
    #[serde(default)]
    pub engine: String,
    /// Store-assigned unique id (UUID v4 text); empty until created.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Store-wide revision of the object's last write; 0 until created.
    #[serde(default)]
    pub resource_version: u64,
    /// Bumped by the store on every change of `spec` (not of `status` or metadata).
    #[serde(default)]
    pub generation: u64,
    /// Labels for selectors.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Creation time, set by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// Set by the store when deletion was requested while finalizers remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_requested: Option<DateTime<Utc>>,
    /// Finalizers: deletion completes only when this list is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    /// Owners (for garbage collection and controller `owns` mapping).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<OwnerRef>,
}

/// A reference to an owning object in the same engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OwnerRef {
    /// Kind of the owner, e.g. `Pipeline`.
    pub kind: String,
    /// Name of the owner.
    pub name: String,
    /// Uid of the owner.
    pub uid: String,
}

/// The untyped form every store backend keeps: spec and status as JSON values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicObject {
    /// Always [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Kind, e.g. `Pipeline`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Observed state.
    #[serde(default)]
    pub status: serde_json::Value,
}

/// A typed resource kind. Typed objects convert to and from [`DynamicObject`].
pub trait Resource: Sized + Clone + Send + Sync + 'static {
    /// Kind name, e.g. `"Pipeline"`.
    const KIND: &'static str;
    /// Spec type.
    type Spec: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync;
    /// Status type.
    type Status: Serialize + serde::de::DeserializeOwned + Clone + Default + Send + Sync;
    /// Metadata.
    fn meta(&self) -> &ObjectMeta;
    /// Mutable metadata.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
    /// Converts to the untyped form.
    fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error>;
    /// Converts from the untyped form (the kind must match).
    fn from_dynamic(obj: DynamicObject) -> Result<Self, serde_json::Error>;
    /// Decodes the JSON of a [`DynamicObject`] of this kind (as a store keeps
    /// it) straight into the typed form. The result equals
    /// `from_dynamic(serde_json::from_slice(json)?)`; the kinds of this crate
    /// override it to skip the intermediate `serde_json::Value` tree.
    fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        Self::from_dynamic(serde_json::from_slice(json)?)
    }
    /// The status as JSON, as [`to_dynamic`](Resource::to_dynamic) would give
    /// it; the kinds of this crate override it to leave the spec unencoded.
    fn status_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        Ok(self.to_dynamic()?.status)
    }
}

/// The envelope of a stored object with typed spec and status: what
/// [`Resource::from_json`] decodes into. A `null` or missing status is the
/// default one, and other fields are ignored, as in `from_dynamic`.
#[derive(Deserialize)]
pub(crate) struct TypedEnvelope<S, T> {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default)]
    pub status: Option<T>,
}

impl ObjectMeta {
    /// Metadata with a name and engine; every store-owned field left empty.
    pub fn new(engine: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            engine: engine.into(),
            ..Self::default()
        }
    }
}

/// Implements [`Resource`] for a typed object with `metadata`, `spec` and `status`
/// fields, so each kind's conversion to [`DynamicObject`] is written once.
macro_rules! impl_resource {
    ($ty:ident, $spec:ty, $status:ty) => {
        impl $crate::model::meta::Resource for $ty {
            const KIND: &'static str = stringify!($ty);
            type Spec = $spec;
            type Status = $status;

            fn meta(&self) -> &$crate::model::meta::ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut $crate::model::meta::ObjectMeta {
                &mut self.metadata
            }

            fn to_dynamic(&self) -> Result<$crate::model::meta::DynamicObject, serde_json::Error> {
                Ok($crate::model::meta::DynamicObject {
                    api_version: $crate::model::meta::API_VERSION.to_owned(),
                    kind: Self::KIND.to_owned(),
                    metadata: self.metadata.clone(),
                    spec: serde_json::to_value(&self.spec)?,
                    status: serde_json::to_value(&self.status)?,
                })
            }

            fn from_dynamic(
                obj: $crate::model::meta::DynamicObject,
            ) -> Result<Self, serde_json::Error> {
                use serde::de::Error as _;
                if obj.kind != Self::KIND {
                    return Err(serde_json::Error::custom(format!(
                        "expected kind `{}`, found `{}`",
                        Self::KIND,
                        obj.kind
                    )));
                }
                // A status that was never written is stored as JSON null; treat it as
                // the default rather than failing to read a fresh object.
                let status = if obj.status.is_null() {
                    <$status>::default()
                } else {
                    serde_json::from_value(obj.status)?
                };
                Ok(Self {
                    api_version: obj.api_version,
                    kind: obj.kind,
                    metadata: obj.metadata,
                    spec: serde_json::from_value(obj.spec)?,
                    status,
                })
            }

            fn status_json(&self) -> Result<serde_json::Value, serde_json::Error> {
                serde_json::to_value(&self.status)
            }

            fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
                use serde::de::Error as _;
                let obj: $crate::model::meta::TypedEnvelope<$spec, $status> =
                    serde_json::from_slice(json)?;
                if obj.kind != Self::KIND {
                    return Err(serde_json::Error::custom(format!(
                        "expected kind `{}`, found `{}`",
                        Self::KIND,
                        obj.kind
                    )));
                }
                Ok(Self {
                    api_version: obj.api_version,
                    kind: obj.kind,
                    metadata: obj.metadata,
                    spec: obj.spec,
                    status: obj.status.unwrap_or_default(),
                })
            }
        }
    };
}
pub(crate) use impl_resource;
