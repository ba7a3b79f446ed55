//! Named calls served by trusted native plugins (the `host-call` capability).

use crate::HostError;
use crate::bindings::arkline::step::host_call as wit;

/// Calls the host handler registered as `name` with `payload` and returns its reply.
pub fn call(name: &str, payload: &[u8]) -> Result<Vec<u8>, HostError> {
    Ok(wit::call(name, payload)?)
}
