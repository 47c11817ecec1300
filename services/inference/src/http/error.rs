//! The HTTP side's error mapping, once: serving errors to statuses, as
//! Ferry's JSON error body or, for `/invocations`, MLflow's.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{codec::mlflow::ScoringError, error::ServeError};

/// The one mapping from serving errors to HTTP statuses.
pub(crate) struct ApiError(pub(crate) ServeError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            ServeError::Model(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::VersionMismatch(_) => StatusCode::CONFLICT,
            ServeError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ServeError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let retry = matches!(self.0, ServeError::Overloaded(_) | ServeError::Unavailable(_));
        let challenge = matches!(self.0, ServeError::Unauthenticated(_));
        let mut resp = (status, Json(json!({ "error": self.0.to_string() }))).into_response();
        if challenge {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        ApiError(e)
    }
}

/// An error in MLflow's scoring-server shape (`{"error_code", "message"}`),
/// for `/invocations` clients written against `mlflow models serve`.
pub(crate) struct ScoringApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) retry: bool,
}

impl From<ScoringError> for ScoringApiError {
    fn from(e: ScoringError) -> Self {
        ScoringApiError { status: StatusCode::BAD_REQUEST, code: e.code, message: e.message, retry: false }
    }
}

impl From<ServeError> for ScoringApiError {
    fn from(e: ServeError) -> Self {
        let (status, code) = match &e {
            ServeError::NotFound(_) => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            ServeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
            ServeError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            // What MLflow answers when the model itself fails on the input.
            ServeError::Model(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            ServeError::VersionMismatch(_) => (StatusCode::CONFLICT, "INVALID_STATE"),
            ServeError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "REQUEST_LIMIT_EXCEEDED"),
            ServeError::DeadlineExceeded(_) => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
            ServeError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            ServeError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        let retry = matches!(e, ServeError::Overloaded(_) | ServeError::Unavailable(_));
        ScoringApiError { status, code, message: e.to_string(), retry }
    }
}

impl IntoResponse for ScoringApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(json!({ "error_code": self.code, "message": self.message }))).into_response();
        if self.retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
