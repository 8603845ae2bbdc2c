//! The OpenAI-compatible surface (`/v1`): chat completions, completions and models, served by
//! the provider router (local engines first, remote fallbacks). The gateway's auth applies.
//! Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

pub mod audio;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod params;
pub mod speech;
pub mod stream;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Route;
use crate::providers::ProviderError;

pub fn routes() -> Vec<Route> {
    let mut r = chat::routes();
    r.extend(audio::routes());
    r.extend(speech::routes());
    r.extend(completions::routes());
    r.extend(embeddings::routes());
    r.extend(models::routes());
    r
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (a busy model).
    pub retry_after: Option<u64>,
}

impl OpenAiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> OpenAiError {
        OpenAiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl From<ProviderError> for OpenAiError {
    fn from(e: ProviderError) -> OpenAiError {
        let message = e.to_string();
        let (status, kind, code, param) = match &e {
            ProviderError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None, None),
            ProviderError::ContextOverflow(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("context_length_exceeded"),
                Some("messages"),
            ),
            ProviderError::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
            ),
            ProviderError::Unavailable(_) | ProviderError::Exhausted(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some("provider_unavailable"), None)
            }
            ProviderError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "server_error", Some("upstream_error"), None),
            ProviderError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("model_overloaded"), None),
        };
        OpenAiError {
            status,
            message,
            kind,
            param: param.map(str::to_string),
            code,
            retry_after: matches!(e, ProviderError::Overloaded { .. }).then_some(1),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Turns an error that is not in OpenAI's shape (the security layer's `{"detail": …}`, the
/// framework's plain text) on a `/v1` path into OpenAI's shape, so OpenAI clients show the
/// reason.
pub fn reshape_guard_error(status: StatusCode, detail: &str) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", Some("forbidden")),
        404 => ("invalid_request_error", Some("not_found")),
        405 => ("invalid_request_error", Some("method_not_allowed")),
        408 => ("invalid_request_error", Some("request_timeout")),
        413 => ("invalid_request_error", Some("request_too_large")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    let e = OpenAiError {
        status,
        message: detail.to_string(),
        kind,
        param: None,
        code,
        retry_after: None,
    };
    e.into_response()
}

/// Which provider served a response (and whether a fallback happened), for operators.
pub fn provider_headers(resp: &mut Response, routed_label: &str, fell_back: usize) {
    if let Ok(v) = HeaderValue::from_str(routed_label) {
        resp.headers_mut().insert("x-gateway-provider", v);
    }
    if fell_back > 0 {
        if let Ok(v) = HeaderValue::from_str(&fell_back.to_string()) {
            resp.headers_mut().insert("x-gateway-fallbacks", v);
        }
    }
}

pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}
