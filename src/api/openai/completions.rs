//! `POST /v1/completions`: raw-prompt completion, streaming and not.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Value};

use super::chat::usage_json;
use super::params::prompt_cache_key;
use super::params::{gen_params, model, parse_body, stream};
use super::stream::{collect, sse_body, sse_response, Piece};
use super::{now_unix, provider_headers, OpenAiError};
use crate::api::{route, Route};
use crate::providers::{Prompt, Providers, TextRequest};
use crate::security::principal::Principal;

pub fn routes() -> Vec<Route> {
    vec![route(
        "post",
        "/v1/completions",
        "OpenAI-compatible text completion (streaming with stream=true)",
        &[],
        post(complete),
    )
    .errors(&[400, 404, 429, 502, 503])
    .ok_content(json!({"application/json": {"schema": {"type": "object", "required": ["id", "object", "choices"]}},
                       "text/event-stream": {"schema": crate::api::openapi::sse_event_schema("with stream=true: `data: <chunk JSON>` frames, then `data: [DONE]`")}}))
    .body(
        json!({"application/json": {"schema": {"type": "object", "required": ["prompt"], "properties": {
            "model": {"type": "string"}, "prompt": {"type": "string"}, "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer"}, "temperature": {"type": "number"}, "echo": {"type": "boolean"}}}}}),
    )]
}

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn complete(Extension(providers): Extension<Arc<Providers>>, principal: Option<Extension<Principal>>, body: Bytes) -> Response {
    match inner(providers, principal.map(|p| p.0), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn inner(providers: Arc<Providers>, principal: Option<Principal>, body: Bytes) -> Result<Response, OpenAiError> {
    let b = parse_body(&body)?;
    let prompt = match b.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or("").to_string(),
        Some(Value::Array(_)) => {
            return Err(OpenAiError::invalid(
                "'prompt' must be one string (batches are not supported)",
                Some("prompt"),
            ))
        }
        _ => return Err(OpenAiError::invalid("'prompt' is required and must be a string", Some("prompt"))),
    };
    if b.get("suffix").map(|v| !v.is_null()).unwrap_or(false) {
        return Err(OpenAiError::invalid("'suffix' is not supported", Some("suffix")));
    }
    let echo = b.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let params = gen_params(&b, Some(DEFAULT_MAX_TOKENS))?;
    let (streaming, include_usage) = stream(&b)?;
    let requested = model(&b)?;
    let req = TextRequest {
        prompt: Prompt::Text(prompt.clone()),
        params,
        cache_scope: principal.as_ref().map(crate::providers::cache_scope).unwrap_or_default(),
        cache_key: prompt_cache_key(&b)?,
        cache_key_auto: false,
    };
    let routed = providers.stream(requested.as_deref(), &req).await?;
    let label = routed.target.label();
    let fell_back = routed.fell_back.len();
    let model_name = routed.target.model.clone();
    let id = format!("cmpl-{}", &crate::util::new_hex_id()[..24]);
    let created = now_unix();
    let mut resp = if streaming {
        let chunk = move |text: String, finish: Option<String>, usage: Option<Value>| {
            let mut c = json!({"id": id, "object": "text_completion", "created": created, "model": model_name,
                               "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}]});
            if let Some(u) = usage {
                c["choices"] = json!([]);
                c["usage"] = u;
            }
            c
        };
        let body = sse_body(routed, Vec::new(), include_usage, move |p| match p {
            Piece::Start if echo => Some(chunk(prompt.clone(), None, None)),
            Piece::Start | Piece::ToolCalls(_) => None,
            Piece::Text(t) => Some(chunk(t, None, None)),
            Piece::Finish(f) => Some(chunk(String::new(), Some(f), None)),
            Piece::Usage(u) => Some(chunk(String::new(), None, Some(usage_json(&u)))),
        });
        sse_response(body)
    } else {
        let c = collect(routed, &[]).await?;
        let text = if echo { format!("{prompt}{}", c.text) } else { c.text };
        Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "text": text, "finish_reason": c.finish, "logprobs": null}],
            "usage": usage_json(&c.usage),
        }))
        .into_response()
    };
    provider_headers(&mut resp, &label, fell_back);
    Ok(resp)
}
