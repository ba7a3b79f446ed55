//! The engine's blob cache (the `cache` capability).

use crate::HostError;
use crate::bindings::arkline::step::cache as wit;

/// The blob stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
    Ok(wit::get(key)?)
}

/// Stores `value` under `key`, replacing any previous value.
pub fn put(key: &str, value: &[u8]) -> Result<(), HostError> {
    Ok(wit::put(key, value)?)
}

/// Removes the blob under `key` (a missing key is not an error).
pub fn remove(key: &str) -> Result<(), HostError> {
    Ok(wit::remove(key)?)
}
