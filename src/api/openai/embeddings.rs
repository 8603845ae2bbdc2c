//! `POST /v1/embeddings` (OpenAI shape): the `embedding.text` route's local model or remote
//! provider, with fallback. `input` is a string, strings, token ids, or arrays of token ids;
//! `encoding_format` float or base64 (little-endian f32, as OpenAI's clients decode it);
//! `dimensions` keeps the first N components and renormalises; `truncate: true` (an extension)
//! cuts over-long inputs instead of refusing them.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::params::{model, parse_body};
use super::{provider_headers, OpenAiError};
use crate::api::{route, Route};
use crate::providers::embeddings::{EmbedInput, EmbedRequest};
use crate::providers::{ProviderError, Providers};

/// OpenAI's own limit on inputs per request.
pub const MAX_INPUTS: usize = 2048;

pub fn routes() -> Vec<Route> {
    vec![
        route("post", "/v1/embeddings", "OpenAI-compatible text embeddings", &[], post(embeddings))
            .errors(&[400, 404, 429, 502, 503])
            .ok_json(
                json!({"type": "object", "required": ["object", "data", "model", "usage"], "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"type": "object", "required": ["object", "index", "embedding"], "properties": {
                "object": {"const": "embedding"}, "index": {"type": "integer"},
                "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]}}}},
            "model": {"type": "string"},
            "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"]}}}),
            )
            .body(
                json!({"application/json": {"schema": {"type": "object", "required": ["input"], "properties": {
            "input": {"anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
                {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}}}]},
            "model": {"type": "string"},
            "encoding_format": {"enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "truncate": {"type": "boolean"},
            "user": {"type": "string"}}}}}),
            ),
    ]
}

pub async fn embeddings(Extension(providers): Extension<Arc<Providers>>, body: Bytes) -> Response {
    match inner(providers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `input` in any of OpenAI's four forms.
pub fn inputs(v: Option<&Value>, allow_empty_text: bool) -> Result<Vec<EmbedInput>, String> {
    let ids = |a: &[Value]| -> Option<Vec<u32>> { a.iter().map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok())).collect() };
    let text = |s: &str| -> Result<EmbedInput, String> {
        if s.is_empty() && !allow_empty_text {
            return Err("'input' cannot contain an empty string".into());
        }
        Ok(EmbedInput::Text(s.to_string()))
    };
    let out = match v {
        Some(Value::String(s)) => vec![text(s)?],
        Some(Value::Array(a)) if a.is_empty() => return Err("'input' cannot be an empty array".into()),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().map(|x| text(x.as_str().unwrap_or(""))).collect::<Result<_, _>>()?
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
            vec![EmbedInput::Ids(
                ids(a).ok_or("token ids in 'input' must be integers from 0 to 4294967295")?,
            )]
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| match x.as_array().map(|t| ids(t)) {
                Some(Some(t)) if !t.is_empty() => Ok(EmbedInput::Ids(t)),
                Some(Some(_)) => Err("'input' cannot contain an empty token array".to_string()),
                _ => Err("token ids in 'input' must be integers from 0 to 4294967295".to_string()),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err("'input' must be a string, an array of strings, an array of token ids, or an array of token-id arrays".into())
        }
        None | Some(Value::Null) => return Err("'input' is required".into()),
        Some(_) => return Err("'input' must be a string or an array".into()),
    };
    if out.len() > MAX_INPUTS {
        return Err(format!("'input' has {} items; at most {MAX_INPUTS} per request", out.len()));
    }
    Ok(out)
}

fn request(b: &Map<String, Value>) -> Result<(EmbedRequest, bool), OpenAiError> {
    let inputs = inputs(b.get("input"), false).map_err(|m| OpenAiError::invalid(m, Some("input")))?;
    let base64 = match b.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(v) => {
            return Err(OpenAiError::invalid(
                format!("'encoding_format' must be 'float' or 'base64', got {v}"),
                Some("encoding_format"),
            ))
        }
    };
    let dimensions = match b.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(d) if d >= 1 => Some(d as usize),
            _ => {
                return Err(OpenAiError::invalid(
                    format!("'dimensions' must be an integer ≥ 1, got {v}"),
                    Some("dimensions"),
                ))
            }
        },
    };
    let truncate = match b.get("truncate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(t)) => *t,
        Some(v) => {
            return Err(OpenAiError::invalid(
                format!("'truncate' must be a boolean, got {v}"),
                Some("truncate"),
            ))
        }
    };
    Ok((
        EmbedRequest {
            inputs,
            truncate,
            dimensions,
        },
        base64,
    ))
}

/// Provider errors as OpenAI reports them for this endpoint (the input, not messages, is long).
pub fn embed_error(e: ProviderError) -> OpenAiError {
    match e {
        ProviderError::ContextOverflow(m) => OpenAiError {
            code: Some("context_length_exceeded"),
            ..OpenAiError::invalid(m, Some("input"))
        },
        ProviderError::Invalid(m) => OpenAiError::invalid(m, Some("input")),
        other => OpenAiError::from(other),
    }
}

#[derive(Serialize)]
struct Item<'a, E: Serialize> {
    object: &'static str,
    index: usize,
    embedding: &'a E,
}

/// `data`: one `{"object": "embedding", index, embedding}` per vector, in order.
fn data_json<E: Serialize>(embeddings: &[E]) -> serde_json::Result<String> {
    let items: Vec<Item<E>> = embeddings
        .iter()
        .enumerate()
        .map(|(index, embedding)| Item {
            object: "embedding",
            index,
            embedding,
        })
        .collect();
    serde_json::to_string(&items)
}

async fn inner(providers: Arc<Providers>, body: Bytes) -> Result<Response, OpenAiError> {
    let b = parse_body(&body)?;
    let (req, base64) = request(&b)?;
    let requested = model(&b)?;
    let done = providers.embed(None, requested.as_deref(), &req).await.map_err(embed_error)?;
    if let (Some(d), Some(v)) = (req.dimensions, done.vectors.first()) {
        if v.len() < d {
            return Err(OpenAiError::invalid(
                format!("'dimensions' is {d}, but this model's vectors have {}", v.len()),
                Some("dimensions"),
            ));
        }
    }
    // Serialized straight from the f32s (shortest round-trip form), never through `Value`.
    let data = if base64 {
        let items: Vec<String> = done
            .vectors
            .iter()
            .map(|v| base64::engine::general_purpose::STANDARD.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()))
            .collect();
        data_json(&items)
    } else {
        data_json(&done.vectors)
    }
    .map_err(|e| OpenAiError::from(ProviderError::Unavailable(format!("encoding the response: {e}"))))?;
    let tail =
        json!({"model": done.target.model, "usage": {"prompt_tokens": done.prompt_tokens, "total_tokens": done.prompt_tokens}}).to_string();
    let body = format!("{{\"object\":\"list\",\"data\":{data},{}", &tail[1..]);
    let mut resp = (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
    provider_headers(&mut resp, &done.target.label(), done.fell_back.len());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_input_forms_and_their_errors() {
        assert_eq!(inputs(Some(&json!("hi")), false).unwrap(), [EmbedInput::Text("hi".into())]);
        assert_eq!(inputs(Some(&json!(["a", "b"])), false).unwrap().len(), 2);
        assert_eq!(inputs(Some(&json!([1, 2, 3])), false).unwrap(), [EmbedInput::Ids(vec![1, 2, 3])]);
        assert_eq!(
            inputs(Some(&json!([[1], [2, 3]])), false).unwrap(),
            [EmbedInput::Ids(vec![1]), EmbedInput::Ids(vec![2, 3])]
        );
        assert!(inputs(Some(&json!([])), false).unwrap_err().contains("empty array"));
        assert!(inputs(Some(&json!("")), false).unwrap_err().contains("empty string"));
        assert_eq!(inputs(Some(&json!("")), true).unwrap(), [EmbedInput::Text(String::new())]);
        assert!(inputs(Some(&json!([[]])), false).unwrap_err().contains("empty token array"));
        assert!(inputs(Some(&json!([-1])), false).unwrap_err().contains("integers"));
        assert!(inputs(Some(&json!(["a", 1])), false).unwrap_err().contains("must be a string"));
        assert!(inputs(None, false).unwrap_err().contains("required"));
        assert!(inputs(Some(&json!(vec!["x"; MAX_INPUTS + 1])), false)
            .unwrap_err()
            .contains("at most 2048"));
    }
}
