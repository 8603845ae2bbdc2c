//! The one mapping from failures to HTTP: `{"detail": "..."}` for handler errors and the
//! pydantic-style `422 {"detail": [{type, loc, msg, input}]}` for validation errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{1}")]
    Status(StatusCode, String),
    #[error("validation failed")]
    Invalid(Vec<Value>),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::Status(StatusCode::BAD_REQUEST, m.into())
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::Status(StatusCode::NOT_FOUND, m.into())
    }
    pub fn run_not_found(id: &str) -> ApiError {
        ApiError::not_found(format!("Run '{id}' not found"))
    }
    pub fn invalid(kind: &str, loc: Value, msg: impl Into<String>, input: Value) -> ApiError {
        ApiError::Invalid(vec![json!({"type": kind, "loc": loc, "msg": msg.into(), "input": input})])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Status(s, m) => (s, axum::Json(json!({"detail": m}))).into_response(),
            ApiError::Invalid(errs) => (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"detail": errs}))).into_response(),
            ApiError::Store(StoreError::Full(why)) => (
                StatusCode::INSUFFICIENT_STORAGE,
                axum::Json(json!({"detail": format!(
                    "Insufficient Storage: the gateway's data disk is full ({why}); nothing was written. Free space on the data dir's disk and retry; reads still work."
                )})),
            )
                .into_response(),
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"detail": format!("Internal store error: {e}")})),
                )
                    .into_response()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The status of audio that cannot be read: a format not read here (415), past the length
/// limit (413), corrupt or empty (400).
pub fn audio_status(e: &abstractgateway_engines::audio::AudioError) -> StatusCode {
    use abstractgateway_engines::audio::AudioError;
    match e {
        AudioError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        AudioError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        AudioError::Corrupt(_) | AudioError::Empty => StatusCode::BAD_REQUEST,
    }
}
