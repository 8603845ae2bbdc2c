//! `GET /v1/models` and `GET /v1/models/{id}`: the models loaded here (chat and embedding), plus
//! the remote targets of the `input.text` route (as `provider/model`, which requests may name).

use std::sync::Arc;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::OpenAiError;
use crate::api::{route, Route};
use crate::providers::Providers;

pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/v1/models", "Models this gateway can serve (OpenAI shape)", &[], get(list)).ok_json(json!({
            "type": "object", "required": ["object", "data"], "properties": {"object": {"const": "list"}, "data": {"type": "array",
            "items": {"type": "object", "required": ["id", "object"], "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}}}})),
        route("get", "/v1/models/{*model_id}", "One model (OpenAI shape)", &[], get(one)).errors(&[404]),
    ]
}

fn all(p: &Providers) -> Vec<Value> {
    let mut out: Vec<Value> = p
        .local
        .models
        .iter()
        .map(|m| {
            json!({"id": m.info.id, "object": "model", "created": m.loaded_at, "owned_by": "local",
                   "format": m.info.format, "architecture": m.info.architecture, "quantization": m.info.quantization,
                   "context_length": m.context, "size_bytes": m.info.size_bytes, "name": m.info.name, "backend": m.backend})
        })
        .collect();
    out.extend(p.local.embedders.iter().map(|e| {
        json!({"id": e.info.id, "object": "model", "created": e.loaded_at, "owned_by": "local", "task": "embedding",
               "format": e.info.format, "architecture": e.info.architecture, "dimension": e.dimension,
               "context_length": e.max_tokens, "size_bytes": e.info.size_bytes})
    }));
    out.extend(p.local.transcribers.iter().map(|t| {
        json!({"id": t.info.id, "object": "model", "created": t.loaded_at, "owned_by": "local", "task": "transcription",
               "format": t.info.format, "architecture": t.info.architecture, "languages": t.engine.languages.len(),
               "size_bytes": t.info.size_bytes})
    }));
    out.extend(p.local.speakers.iter().map(|s| {
        json!({"id": s.info.id, "object": "model", "created": s.loaded_at, "owned_by": "local", "task": "speech",
               "format": s.info.format, "architecture": s.info.architecture, "voices": [s.voice], "sample_rate": s.sample_rate,
               "available": s.available(), "size_bytes": s.info.size_bytes})
    }));
    for t in p.route.text().chain().into_iter().filter(|t| !t.is_local()) {
        let id = format!("{}/{}", t.provider, t.model);
        if !out.iter().any(|m| m["id"] == id.as_str()) {
            out.push(json!({"id": id, "object": "model", "created": 0, "owned_by": t.provider,
                            "base_url": t.resolved_base_url(), "health": p.breakers.view(&t.key())}));
        }
    }
    out
}

async fn list(Extension(p): Extension<Arc<Providers>>) -> Json<Value> {
    Json(json!({"object": "list", "data": all(&p)}))
}

async fn one(Extension(p): Extension<Arc<Providers>>, Path(id): Path<String>) -> Response {
    match all(&p).into_iter().find(|m| m["id"] == id.as_str()) {
        Some(m) => Json(m).into_response(),
        None => OpenAiError::from(crate::providers::ProviderError::ModelNotFound(id)).into_response(),
    }
}
