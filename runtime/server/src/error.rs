//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::{EngineError, InvalidRequest, SchedulerError};

use crate::api_responses::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (backpressure).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }
    pub fn not_found_model(model: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            retry_after: None,
        }
    }
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided.".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::server_error(StatusCode::INTERNAL_SERVER_ERROR, message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::server_error(StatusCode::SERVICE_UNAVAILABLE, message.into())
    }
    fn server_error(status: StatusCode, message: String) -> Self {
        ApiError {
            status,
            message,
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }
    /// 429: the queue is full; try again after `retry_after_s`.
    pub fn queue_full(message: impl Into<String>, retry_after_s: u64) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
            retry_after: Some(retry_after_s),
        }
    }
    /// 408: the request body did not arrive in time.
    pub fn timeout(limit: std::time::Duration) -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request body did not arrive within {limit:?}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
            retry_after: None,
        }
    }
    /// 404: no route has this path.
    pub fn no_route(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("there is no route {path} (GET /openapi.json lists them)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }
    /// 405: the path exists, not with this method (axum adds the `Allow` header).
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path} does not take {method} (the Allow header says what it takes)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
            retry_after: None,
        }
    }
    /// 413: the body is over the size limit.
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is over the limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: self.kind.to_string(),
                param: self.param,
                code: self.code.map(str::to_string),
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", s.into());
        }
        r
    }
}

/// Every engine error has its status here, with no catch-all: a new variant does not
/// compile until it is given one. 4xx where the request itself is at fault, 429/503 where the
/// server cannot take it now, 500 for the engine's own failures.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadRequest(m) => ApiError::bad_request(m, None),
            EngineError::Invalid(e) => e.into(),
            e @ EngineError::QueueFull { .. } => ApiError::queue_full(e.to_string(), 1),
            EngineError::Stopped => ApiError::unavailable(EngineError::Stopped.to_string()),
            EngineError::Scheduler(s) => s.into(),
            e @ (EngineError::Config(_)
            | EngineError::InjectedFault
            | EngineError::Block(_)
            | EngineError::Detokenize(_)
            | EngineError::Backend(_)) => ApiError::internal(e.to_string()),
        }
    }
}

/// What the scheduler refuses: a request that can never run here is the client's to fix
/// (400); everything else is a bug in the engine (500).
impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            e @ (SchedulerError::EmptyPrompt(_)
            | SchedulerError::NeverFits { .. }
            | SchedulerError::TooLong { .. }
            | SchedulerError::ExceedsBudget { .. }) => ApiError::bad_request(e.to_string(), None),
            e @ (SchedulerError::DuplicateRequest(_)
            | SchedulerError::UnknownRequest(_)
            | SchedulerError::NotForkable(_)
            | SchedulerError::MissingSample(_)
            | SchedulerError::UnexpectedSample(_)
            | SchedulerError::InvalidConfig(_)
            | SchedulerError::Block(_)) => ApiError::internal(e.to_string()),
        }
    }
}

/// A request that failed validation: 400, naming the field.
impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError::bad_request(e.to_string(), Some(e.param()))
    }
}
