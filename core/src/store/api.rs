//! Typed access to one resource kind.

use std::marker::PhantomData;
use std::sync::Arc;

use futures::StreamExt;

use super::{
    DeleteOptions, EncodedObject, EncodedWatchEvent, LabelSelector, ListQuery, ObjectRef, Revision,
    Store, StoreError,
};
use crate::model::{DynamicObject, ObjectMeta, Resource};

/// Typed access to the objects of kind `R::KIND` (like kube-rs `Api<K>`).
#[derive(Debug)]
pub struct Api<R> {
    store: Arc<dyn Store>,
    _kind: PhantomData<fn() -> R>,
}

impl<R> Clone for Api<R> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            _kind: PhantomData,
        }
    }
}

/// A typed watch event.
#[derive(Debug, Clone)]
pub struct TypedEvent<R> {
    /// What happened.
    pub event_type: super::EventType,
    /// Revision of the write.
    pub revision: Revision,
    /// The object (for `Deleted`, its last state).
    pub object: R,
}

impl<R: Resource> Api<R> {
    /// Typed access through `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            _kind: PhantomData,
        }
    }

    /// The untyped store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn key(engine: &str, name: &str) -> ObjectRef {
        ObjectRef::new(R::KIND, engine, name)
    }

    fn to_dynamic(obj: &R) -> Result<DynamicObject, StoreError> {
        obj.to_dynamic().map_err(|source| StoreError::Conversion {
            kind: R::KIND.to_string(),
            name: obj.meta().name.clone(),
            source,
        })
    }

    fn from_dynamic(obj: DynamicObject) -> Result<R, StoreError> {
        super::watcher::convert(obj)
    }

    /// One object, or `None`.
    pub async fn get(&self, engine: &str, name: &str) -> Result<Option<R>, StoreError> {
        self.store
            .get_encoded(&Self::key(engine, name))
            .await?
            .map(EncodedObject::decode)
            .transpose()
    }

    /// Objects of this kind in `engine` (every engine when `None`) matching `selector`,
    /// with the snapshot revision.
    pub async fn list(
        &self,
        engine: Option<&str>,
        selector: LabelSelector,
    ) -> Result<(Vec<R>, Revision), StoreError> {
        let mut query = ListQuery::kind(R::KIND).selector(selector);
        query.engine = engine.map(str::to_string);
        let list = self.store.list_encoded(&query).await?;
        let items = list
            .items
            .into_iter()
            .map(EncodedObject::decode)
            .collect::<Result<_, _>>()?;
        Ok((items, list.revision))
    }

    /// Creates `obj`; see [`Store::create`].
    pub async fn create(&self, obj: &R) -> Result<R, StoreError> {
        Self::from_dynamic(self.store.create(Self::to_dynamic(obj)?).await?)
    }

    /// Updates spec and metadata with compare-and-swap; see [`Store::update`].
    pub async fn update(&self, obj: &R) -> Result<R, StoreError> {
        Self::from_dynamic(self.store.update(Self::to_dynamic(obj)?).await?)
    }

    /// Updates status with compare-and-swap; see [`Store::update_status`].
    pub async fn update_status(&self, obj: &R) -> Result<R, StoreError> {
        let request = Self::status_request(obj.meta(), &Self::status_of(obj)?)?;
        Self::from_dynamic(self.store.update_status(request).await?)
    }

    /// Writes `status` as the status of the object `meta` names, with the
    /// compare-and-swap of [`Api::update_status`] on `meta.resource_version`,
    /// and returns the metadata stored (the new `resource_version`). For a
    /// writer that keeps its own copy of the object: its spec is neither
    /// serialized nor decoded again, which on a large spec is most of the work.
    pub async fn write_status(
        &self,
        meta: &ObjectMeta,
        status: &R::Status,
    ) -> Result<ObjectMeta, StoreError> {
        let status =
            serde_json::value::to_raw_value(status).map_err(|source| StoreError::Conversion {
                kind: R::KIND.to_string(),
                name: meta.name.clone(),
                source,
            })?;
        self.store
            .write_status_json(
                &Self::key(&meta.engine, &meta.name),
                meta.resource_version,
                status,
            )
            .await
    }

    /// `obj`'s status as JSON (without encoding its spec).
    fn status_of(obj: &R) -> Result<serde_json::Value, StoreError> {
        obj.status_json().map_err(|source| StoreError::Conversion {
            kind: R::KIND.to_string(),
            name: obj.meta().name.clone(),
            source,
        })
    }

    /// The request [`Store::update_status`] reads: key, `resource_version` and
    /// status. The spec is left out (the store ignores it there).
    fn status_request(
        meta: &ObjectMeta,
        status: &serde_json::Value,
    ) -> Result<DynamicObject, StoreError> {
        Ok(DynamicObject {
            api_version: crate::model::API_VERSION.to_owned(),
            kind: R::KIND.to_owned(),
            metadata: meta.clone(),
            spec: serde_json::Value::Null,
            status: status.clone(),
        })
    }

    /// Deletes (or marks for deletion); see [`Store::delete`].
    pub async fn delete(
        &self,
        engine: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<super::DeleteOutcome, StoreError> {
        self.store.delete(&Self::key(engine, name), options).await
    }

    /// Typed events after `from_revision`; see [`Store::watch`].
    pub async fn watch(
        &self,
        engine: Option<&str>,
        from_revision: Revision,
    ) -> Result<
        impl futures::Stream<Item = Result<TypedEvent<R>, StoreError>> + Send + use<R>,
        StoreError,
    > {
        let stream = self
            .store
            .watch_encoded(R::KIND, engine, from_revision)
            .await?;
        Ok(stream.map(|item| {
            item.and_then(
                |EncodedWatchEvent {
                     event_type,
                     revision,
                     object,
                 }| {
                    Ok(TypedEvent {
                        event_type,
                        revision,
                        object: object.decode::<R>()?,
                    })
                },
            )
        }))
    }
}
