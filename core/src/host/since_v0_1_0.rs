//! Bindings for `arkline:step@0.1.0`, generated from `wit/since_v0.1.0`, and the
//! host functions that serve them.

use semver::Version;

use super::capability::Capability;
use super::state::StepState;
use super::step_log::{LogLevel, LogSource};

/// The API version these bindings serve.
pub const VERSION: Version = Version::new(0, 1, 0);

// The generated items carry the WIT documentation where the WIT has it; the
// generated glue (add_to_linker, instantiate helpers) has none.
#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/since_v0.1.0",
        world: "step",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::*;

use bindings::arkline::step::types::HostError;

/// Adds the `arkline:step@0.1.0` imports to `linker`.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<StepState>) -> wasmtime::Result<()> {
    Step::add_to_linker::<StepState, wasmtime::component::HasSelf<StepState>>(linker, |s| s)
}

impl bindings::arkline::step::types::Host for StepState {}

impl bindings::arkline::step::log::Host for StepState {
    async fn log(
        &mut self,
        level: bindings::arkline::step::log::Level,
        message: String,
        fields: Vec<bindings::arkline::step::types::KeyValue>,
    ) {
        use bindings::arkline::step::log::Level;
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let fields = fields.into_iter().map(|kv| (kv.key, kv.value)).collect();
        self.log.push(level, LogSource::Log, message, fields);
    }
}

impl bindings::arkline::step::process::Host for StepState {
    async fn run(
        &mut self,
        command: bindings::arkline::step::process::Command,
    ) -> Result<bindings::arkline::step::process::Output, HostError> {
        use super::process::{self, ProcessContext, ProcessError, ProcessRequest, ProcessStatus};
        use bindings::arkline::step::process::{ExitStatus, Output};
        self.check(Capability::Process, Some(&command.program))
            .map_err(HostError::Denied)?;
        let request = ProcessRequest {
            program: command.program,
            args: command.args,
            env: command
                .env
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
            cwd: command.cwd,
            stdin: command.stdin,
            timeout: command.timeout_ms.map(std::time::Duration::from_millis),
            stream_to_log: command.stream_to_log,
        };
        let ctx = ProcessContext {
            policy: &self.call.process,
            workspace: self.call.workspace.as_deref(),
            log: &self.log,
            deadline: self.call.deadline,
            require_sandbox: self.call.require_process_sandbox,
        };
        match process::run(ctx, request).await {
            Ok(out) => Ok(Output {
                status: match out.status {
                    ProcessStatus::Exited(code) => ExitStatus::Exited(code),
                    ProcessStatus::Signaled(signal) => ExitStatus::Signaled(signal),
                    ProcessStatus::TimedOut => ExitStatus::TimedOut,
                },
                stdout: out.stdout,
                stderr: out.stderr,
                stdout_truncated: out.stdout_truncated,
                stderr_truncated: out.stderr_truncated,
            }),
            Err(ProcessError::InvalidArgument(m)) => Err(HostError::InvalidArgument(m)),
            Err(ProcessError::TooLarge(m)) => Err(HostError::TooLarge(m)),
            Err(ProcessError::Failed(m)) => Err(HostError::Failed(m)),
        }
    }
}

impl bindings::arkline::step::http::Host for StepState {
    async fn send(
        &mut self,
        request: bindings::arkline::step::http::Request,
    ) -> Result<bindings::arkline::step::http::Response, HostError> {
        use super::http::{HttpError, HttpRequest};
        use bindings::arkline::step::types::KeyValue;
        self.check(Capability::Http, None)
            .map_err(HostError::Denied)?;
        let client = self.call.http_client.clone().map_err(HostError::Failed)?;
        let request = HttpRequest {
            method: request.method,
            url: request.url,
            headers: request
                .headers
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
            body: request.body,
            timeout: request.timeout_ms.map(std::time::Duration::from_millis),
            follow_redirects: request.follow_redirects,
        };
        // The host check names the biz and engine; the policy's own refusal says
        // which host or address and why.
        let who = self.caller.clone();
        match client.send(&self.call.http, request).await {
            Ok(response) => Ok(bindings::arkline::step::http::Response {
                status: response.status,
                headers: response
                    .headers
                    .into_iter()
                    .map(|(key, value)| KeyValue { key, value })
                    .collect(),
                body: response.body,
            }),
            Err(HttpError::Denied(why)) => {
                Err(HostError::Denied(who.denial(Capability::Http, &why)))
            }
            Err(HttpError::InvalidArgument(m)) => Err(HostError::InvalidArgument(m)),
            Err(HttpError::Timeout) => Err(HostError::Timeout),
            Err(HttpError::TooLarge(m)) => Err(HostError::TooLarge(m)),
            Err(HttpError::Failed(m)) => Err(HostError::Failed(m)),
        }
    }
}

impl StepState {
    /// Runs a cache operation off the async threads, after the capability check.
    async fn with_cache<R: Send + 'static>(
        &mut self,
        op: impl FnOnce(&super::BlobCache) -> Result<R, super::cache::CacheError> + Send + 'static,
    ) -> Result<R, HostError> {
        use super::cache::CacheError;
        self.check(Capability::Cache, None)
            .map_err(HostError::Denied)?;
        let Some(cache) = self.call.cache.clone() else {
            return Err(HostError::Failed(format!(
                "engine `{}` has no blob cache configured",
                self.caller.engine
            )));
        };
        match tokio::task::spawn_blocking(move || op(&cache)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(CacheError::InvalidArgument(m))) => Err(HostError::InvalidArgument(m)),
            Ok(Err(CacheError::TooLarge(m))) => Err(HostError::TooLarge(m)),
            Ok(Err(CacheError::Failed(m))) => Err(HostError::Failed(m)),
            Err(e) => Err(HostError::Failed(format!("the cache task failed: {e}"))),
        }
    }
}

impl StepState {
    /// The namespace of this biz's keys in its engine's cache.
    fn cache_namespace(&self) -> String {
        format!("biz/{}", self.caller.biz)
    }
}

impl bindings::arkline::step::cache::Host for StepState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        let ns = self.cache_namespace();
        self.with_cache(move |cache| cache.get(&super::BlobCache::key_in(&ns, &key)?))
            .await
    }

    async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        let ns = self.cache_namespace();
        self.with_cache(move |cache| cache.put(&super::BlobCache::key_in(&ns, &key)?, &value))
            .await
    }

    async fn remove(&mut self, key: String) -> Result<(), HostError> {
        let ns = self.cache_namespace();
        self.with_cache(move |cache| cache.remove(&super::BlobCache::key_in(&ns, &key)?))
            .await
    }
}

impl bindings::arkline::step::host_call::Host for StepState {
    async fn call(&mut self, name: String, payload: Vec<u8>) -> Result<Vec<u8>, HostError> {
        use crate::native::NativeCallError;
        self.check(Capability::HostCall, Some(&name))
            .map_err(HostError::Denied)?;
        if name == super::PROVENANCE_CALL {
            // Built in: the host writes the statement from its own records;
            // the guest names only the subjects.
            let Some(signer) = self.call.provenance.clone() else {
                return Err(HostError::Failed(format!(
                    "provenance is not configured for engine `{}`: set the engine's \
                     `provenance.key_secret` to a secret holding an ed25519 key \
                     (`cargo ark keygen`)",
                    self.caller.engine
                )));
            };
            return signer(&payload).map_err(HostError::InvalidArgument);
        }
        let native = self.call.native.clone();
        // Native handlers are synchronous: keep them off the async threads.
        let result = tokio::task::spawn_blocking(move || native.call(&name, &payload))
            .await
            .map_err(|e| HostError::Failed(format!("the host-call task failed: {e}")))?;
        result.map_err(|e| match e {
            NativeCallError::UnknownHandler(_) => HostError::InvalidArgument(e.to_string()),
            NativeCallError::TooLarge { .. } => HostError::TooLarge(e.to_string()),
            _ => HostError::Failed(e.to_string()),
        })
    }
}
