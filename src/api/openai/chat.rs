//! `POST /v1/chat/completions`, streaming and not, with tools in the OpenAI shape.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::params::prompt_cache_key;
use super::params::{gen_params, model, parse_body, stream};
use super::stream::{collect, sse_body, sse_response, Piece};
use super::{now_unix, provider_headers, OpenAiError};
use crate::api::{route, Route};
use crate::providers::{Prompt, Providers, TextRequest, ToolChoice, Usage};
use crate::security::principal::Principal;

pub fn routes() -> Vec<Route> {
    vec![route(
        "post",
        "/v1/chat/completions",
        "OpenAI-compatible chat completion (streaming with stream=true)",
        &[],
        post(chat),
    )
    .errors(&[400, 404, 429, 502, 503])
    .ok_content(json!({"application/json": {"schema": {"type": "object", "required": ["id", "object", "choices"]}},
                       "text/event-stream": {"schema": crate::api::openapi::sse_event_schema("with stream=true: `data: <chunk JSON>` frames, then `data: [DONE]`")}}))
    .body(
        json!({"application/json": {"schema": {"type": "object", "required": ["messages"], "properties": {
            "model": {"type": "string"}, "messages": {"type": "array"}, "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer"}, "temperature": {"type": "number"}, "top_p": {"type": "number"},
            "seed": {"type": "integer"}, "stop": {}, "tools": {"type": "array"}, "tool_choice": {},
            "response_format": {"type": "object"}}}}}),
    )]
}

/// Message content as text: a string, or the text parts of a parts array.
fn content_text(m: &Value, i: usize) -> Result<String, OpenAiError> {
    let param = format!("messages[{i}].content");
    match m.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(other) => {
                        return Err(OpenAiError::invalid(
                            format!("content parts of type '{other}' are not supported by text models"),
                            Some(&param),
                        ))
                    }
                    None => return Err(OpenAiError::invalid("each content part needs a 'type'", Some(&param))),
                }
            }
            Ok(out)
        }
        Some(v) => Err(OpenAiError::invalid(
            format!("content must be a string or an array of parts, got {v}"),
            Some(&param),
        )),
    }
}

pub fn messages(b: &Map<String, Value>) -> Result<Vec<Value>, OpenAiError> {
    let Some(list) = b.get("messages").and_then(Value::as_array) else {
        return Err(OpenAiError::invalid(
            "'messages' is required and must be an array",
            Some("messages"),
        ));
    };
    if list.is_empty() {
        return Err(OpenAiError::invalid("'messages' must not be empty", Some("messages")));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            "developer" => "system",
            other => {
                return Err(OpenAiError::invalid(
                    format!("messages[{i}].role must be system, developer, user, assistant or tool, got {other:?}"),
                    Some(&format!("messages[{i}].role")),
                ))
            }
        };
        let mut msg = json!({"role": role, "content": content_text(m, i)?});
        for k in ["tool_calls", "tool_call_id", "name"] {
            if let Some(v) = m.get(k).filter(|v| !v.is_null()) {
                msg[k] = v.clone();
            }
        }
        out.push(msg);
    }
    Ok(out)
}

pub fn tools(b: &Map<String, Value>) -> Result<(Vec<Value>, ToolChoice), OpenAiError> {
    let tools = match b.get("tools") {
        None | Some(Value::Null) => return Ok((Vec::new(), ToolChoice::Auto)),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(OpenAiError::invalid("'tools' must be an array", Some("tools"))),
    };
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") || t.pointer("/function/name").and_then(Value::as_str).is_none() {
            return Err(OpenAiError::invalid(
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": ...}}",
                Some(&format!("tools[{i}]")),
            ));
        }
    }
    match b.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Ok((Vec::new(), ToolChoice::Auto)),
        Some(Value::String(s)) if s == "required" => Ok((tools, ToolChoice::Required)),
        // A named function: offer only that one.
        Some(Value::Object(o)) => {
            let name = o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or("");
            let only: Vec<Value> = tools
                .into_iter()
                .filter(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
                .collect();
            if only.is_empty() {
                return Err(OpenAiError::invalid(
                    format!("tool_choice names '{name}', which is not in tools"),
                    Some("tool_choice"),
                ));
            }
            Ok((only, ToolChoice::Named(name.to_string())))
        }
        _ => Ok((tools, ToolChoice::Auto)),
    }
}

pub fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
}

pub async fn chat(Extension(providers): Extension<Arc<Providers>>, principal: Option<Extension<Principal>>, body: Bytes) -> Response {
    match chat_inner(providers, principal.map(|p| p.0), body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(providers: Arc<Providers>, principal: Option<Principal>, body: Bytes) -> Result<Response, OpenAiError> {
    let b = parse_body(&body)?;
    let messages = messages(&b)?;
    let (tools, tool_choice) = tools(&b)?;
    let params = gen_params(&b, None)?;
    let (streaming, include_usage) = stream(&b)?;
    let requested = model(&b)?;
    let req = TextRequest {
        prompt: Prompt::Chat {
            messages,
            tools: tools.clone(),
            tool_choice,
        },
        params,
        cache_scope: principal.as_ref().map(crate::providers::cache_scope).unwrap_or_default(),
        cache_key: prompt_cache_key(&b)?,
        cache_key_auto: false,
    };
    let routed = providers.stream(requested.as_deref(), &req).await?;
    let label = routed.target.label();
    let fell_back = routed.fell_back.len();
    let model_name = routed.target.model.clone();
    let id = format!("chatcmpl-{}", &crate::util::new_hex_id()[..24]);
    let created = now_unix();
    let mut resp = if streaming {
        let (id2, m2) = (id.clone(), model_name.clone());
        let chunk = move |delta: Value, finish: Option<String>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
        };
        let body = sse_body(routed, tools, include_usage, move |p| {
            Some(match p {
                Piece::Start => chunk(json!({"role": "assistant", "content": ""}), None),
                Piece::Text(t) => chunk(json!({"content": t}), None),
                Piece::ToolCalls(calls) => {
                    let indexed: Vec<Value> = calls
                        .into_iter()
                        .enumerate()
                        .map(|(i, mut c)| {
                            c["index"] = json!(i);
                            c
                        })
                        .collect();
                    chunk(json!({"tool_calls": indexed}), None)
                }
                Piece::Finish(f) => chunk(json!({}), Some(f)),
                Piece::Usage(u) => json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": m2,
                                          "choices": [], "usage": usage_json(&u)}),
            })
        });
        sse_response(body)
    } else {
        let c = collect(routed, &tools).await?;
        let mut message = json!({"role": "assistant", "content": if c.tool_calls.is_some() && c.text.trim().is_empty() { Value::Null } else { json!(c.text) }});
        if let Some(calls) = &c.tool_calls {
            message["tool_calls"] = json!(calls);
        }
        Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": c.finish, "logprobs": null}],
            "usage": usage_json(&c.usage),
        }))
        .into_response()
    };
    provider_headers(&mut resp, &label, fell_back);
    Ok(resp)
}
