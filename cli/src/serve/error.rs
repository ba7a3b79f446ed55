//! The one error shape of the admin API: an HTTP status, a stable `code` scripts
//! can match on, and a `message` that says what is wrong and what to do.

use arkline::TriggerError;
use arkline::container::ContainerError;
use arkline::model::ByteSize;
use arkline::runtime::{InstallError, LifecycleError};
use arkline::store::StoreError;
use arkline::{DeployError, EngineError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code: `unauthorized`, `forbidden`, `not_found`,
    /// `no_route`, `method_not_allowed`, `bad_request`, `invalid_pipeline`,
    /// `invalid_archive`, `request_timeout`, `payload_too_large`, `conflict`, `not_ready`,
    /// `internal`.
    pub code: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// Structured details (e.g. a pipeline's diagnostics), when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// An error answered by the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (see [`ErrorBody::code`]).
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// Structured details.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 `invalid_archive`.
    pub fn invalid_archive(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_archive", message)
    }

    /// 408 `request_timeout`: the body did not arrive in time (the connection is
    /// closed after the answer).
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: ByteSize, flag: &str) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than this server's limit of {}; send a smaller body, \
                 or start `arkline serve` with a larger `{flag}`",
                limit
            ),
        )
    }

    /// 500 `internal`, for failures that are not the caller's.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{}; the server's log has the details", message.into()),
        )
    }

    /// 502 `peer_unavailable`: the node that runs what was asked for does
    /// not answer.
    pub fn peer_unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "peer_unavailable", message)
    }

    /// 503 `not_ready`.
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is starting (restoring its engines) or shutting down; retry shortly",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            details: self.details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may never come: do not wait for it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. } => {
                ApiError::conflict(format!("{e}; retry the request"))
            }
            StoreError::Invalid { .. } => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(format!("the store failed: {other}")),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::NotInstalled { .. } | LifecycleError::NoMatch { .. } => {
                ApiError::not_found(e.to_string())
            }
            other => ApiError::conflict(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(e) => e.into(),
            EngineError::Invalid(diagnostics) => {
                let details = serde_json::to_value(&diagnostics.0).ok();
                let err = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_pipeline",
                    format!(
                        "the pipeline is not valid; fix these and apply it again:\n{}",
                        diagnostics
                            .0
                            .iter()
                            .map(|d| format!("  {d}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                );
                match details {
                    Some(d) => err.with_details(d),
                    None => err,
                }
            }
            EngineError::Trigger(TriggerError::NoPipeline { .. }) => {
                ApiError::not_found(e.to_string())
            }
            EngineError::Trigger(TriggerError::Params { .. } | TriggerError::Group { .. }) => {
                ApiError::bad_request(e.to_string())
            }
            EngineError::Trigger(TriggerError::Store(e)) => e.into(),
            EngineError::Install(InstallError::Lifecycle(e)) | EngineError::Lifecycle(e) => {
                e.into()
            }
            EngineError::Install(e @ InstallError::Component { .. }) => {
                ApiError::invalid_archive(e.to_string())
            }
            EngineError::Deploy { error, .. } => (*error).into(),
            EngineError::NotFound { .. } => ApiError::not_found(e.to_string()),
            EngineError::Decision { refusal, .. } => match refusal {
                arkline::engine::Refusal::NotAGate => ApiError::bad_request(e.to_string()),
                arkline::engine::Refusal::NotWaiting => ApiError::conflict(e.to_string()),
                arkline::engine::Refusal::NotAnApprover => ApiError::forbidden(e.to_string()),
            },
            EngineError::InvalidSettings(_) => ApiError::bad_request(e.to_string()),
            EngineError::Repo { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "repository",
                e.to_string(),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// Each deploy failure has its status: the client's archive or grant (400), a
/// version that clashes with what is installed (409), a fault of the server
/// (500).
impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Archive(_) => ApiError::invalid_archive(format!(
                "the .ark is refused: {e}; build it with `cargo ark package` and check it with `cargo ark verify`"
            )),
            DeployError::Grant { .. } => ApiError::bad_request(format!("bad grant: {e}")),
            DeployError::Signature { .. } => ApiError::forbidden(format!(
                "{e}; sign it with `cargo ark sign --key KEY` using a key the engine's `trusted_keys` setting lists"
            )),
            DeployError::VersionClash { .. } => ApiError::conflict(e.to_string()),
            DeployError::Install(InstallError::Lifecycle(e)) => e.into(),
            DeployError::Install(e @ InstallError::Component { .. }) => {
                ApiError::invalid_archive(e.to_string())
            }
            DeployError::Store(e) => e.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> Self {
        match e {
            ContainerError::Compile { .. } | ContainerError::MissingBiz { .. } => {
                ApiError::invalid_archive(e.to_string())
            }
            ContainerError::Engine { engine, source } => {
                let inner = ApiError::from(*source);
                let message = format!(
                    "cannot deploy the container archive: engine `{engine}`: {}",
                    inner.message
                );
                ApiError { message, ..inner }
            }
            ContainerError::EngineName(_) => ApiError::bad_request(e.to_string()),
            ContainerError::Store(e) => e.into(),
            other => ApiError::internal(other.to_string()),
        }
    }
}
