//! Upstream's embedding routes (spec §1.9): `POST /api/gateway/embeddings` on the host's one
//! embedding space (the `embedding.text` route, else the first embedding model loaded here),
//! `GET /embeddings/config` and the `GET /embeddings/models` catalog. `/v1/embeddings` is the
//! OpenAI-shaped twin (`api/openai/embeddings.rs`); both go through the same router.

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Value};

use super::discovery::with_model_catalog;
use super::error::{ApiError, ApiResult};
use super::openai::embeddings::inputs;
use super::validate::{parse_body, query_bool, query_map, Fields};
use super::{route, Route};
use crate::providers::defaults::Target;
use crate::providers::embeddings::{no_embedder, EmbedRequest, EMBEDDING_ROUTE};
use crate::providers::{ProviderError, Providers};

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "post",
            "/api/gateway/embeddings",
            "Embeddings on this host's embedding space (the embedding.text route)",
            &[],
            post(embed),
        )
        .errors(&[400, 422, 429, 500, 503])
        .body(
            json!({"application/json": {"schema": {"type": "object", "required": ["input"], "properties": {
            "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "provider": {"type": "string"}, "model": {"type": "string"}}}}}),
        )
        .ok_json(json!({"type": "object", "required": ["object", "provider", "model", "dimension", "data"]})),
        route(
            "get",
            "/api/gateway/embeddings/config",
            "The host's embedding configuration (route, provider, model, dimension)",
            &[],
            get(config),
        )
        .ok_json(json!({"type": "object", "required": ["ok", "route", "provider", "model", "dimension"]})),
        route(
            "get",
            "/api/gateway/embeddings/models",
            "Text-embedding models: loaded here, and the route's remote targets (gateway_catalog_v1)",
            &["provider", "providers_only", "base_url"],
            get(models),
        )
        .errors(&[422]),
    ]
}

fn detail(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::Status(status, msg.into())
}

/// The target that defines the embedding space: the route's primary, else the local default.
fn configured(p: &Providers) -> Option<Target> {
    p.embedding_chain(None, None).ok().and_then(|c| c.into_iter().next())
}

async fn embed(Extension(p): Extension<Arc<Providers>>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    // Shapes as upstream's pydantic model: 422 for a wrong type.
    let mut f = Fields::new(&m);
    let req_provider = f
        .opt_str("provider")
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    let req_model = f.opt_str("model").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let input = match m.get("input") {
        Some(v @ Value::String(_)) => v.clone(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => Value::Array(a.clone()),
        Some(other) => {
            return Err(ApiError::invalid(
                "string_type",
                json!(["body", "input"]),
                "Input should be a valid string or a list of strings",
                other.clone(),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "missing",
                json!(["body", "input"]),
                "Field required",
                Value::Object(m.clone()),
            ))
        }
    };
    f.finish()?;
    let Some(space) = configured(&p) else {
        return Err(detail(StatusCode::SERVICE_UNAVAILABLE, no_embedder()));
    };
    // One embedding space per host: naming another provider or model is refused (upstream).
    if let Some(req_p) = req_provider {
        if req_p != space.provider.to_ascii_lowercase() {
            return Err(detail(
                StatusCode::BAD_REQUEST,
                format!(
                    "Embedding provider is fixed for this gateway instance (expected '{}', got '{req_p}')",
                    space.provider
                ),
            ));
        }
    }
    if let Some(req_m) = req_model {
        if req_m != space.model {
            return Err(detail(
                StatusCode::BAD_REQUEST,
                format!(
                    "Embedding model is fixed for this gateway instance (expected '{}', got '{req_m}')",
                    space.model
                ),
            ));
        }
    }
    if input.as_array().is_some_and(Vec::is_empty) {
        return Ok(
            Json(json!({"object": "list", "provider": space.provider, "model": space.model, "dimension": 0, "data": []})).into_response(),
        );
    }
    let inputs = match inputs(Some(&input), true) {
        Ok(i) => i,
        Err(m) => return Err(detail(StatusCode::BAD_REQUEST, m)),
    };
    let req = EmbedRequest {
        inputs,
        ..Default::default()
    };
    match p.embed(None, None, &req).await {
        Ok(done) => {
            let dimension = done.vectors.first().map(Vec::len).unwrap_or(0);
            let data: Vec<Value> = done
                .vectors
                .iter()
                .enumerate()
                .map(|(index, v)| json!({"object": "embedding", "index": index, "embedding": v}))
                .collect();
            Ok(Json(json!({"object": "list", "provider": done.target.provider, "model": done.target.model, "dimension": dimension, "data": data})).into_response())
        }
        Err(e @ (ProviderError::Invalid(_) | ProviderError::ContextOverflow(_))) => Err(detail(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e @ ProviderError::Overloaded { .. }) => {
            let mut r = detail(StatusCode::TOO_MANY_REQUESTS, e.to_string()).into_response();
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(1u32));
            Ok(r)
        }
        Err(e) => Err(detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Embedding generation failed: {e}"),
        )),
    }
}

async fn config(Extension(p): Extension<Arc<Providers>>) -> Json<Value> {
    let Some(space) = configured(&p) else {
        return Json(
            json!({"ok": false, "route": EMBEDDING_ROUTE, "provider": "", "model": "", "base_url": null, "dimension": 0, "error": no_embedder()}),
        );
    };
    let mut out = json!({"ok": true, "route": EMBEDDING_ROUTE, "provider": space.provider, "model": space.model,
                         "base_url": if space.is_local() { None } else { space.resolved_base_url() }, "dimension": 0});
    match p.local.embedder(&space.model).filter(|_| space.is_local()) {
        Some(e) => {
            out["dimension"] = json!(e.dimension);
            out["max_tokens"] = json!(e.max_tokens);
            out["pooling"] = json!(e.pooling);
            out["normalized"] = json!(e.normalize);
            out["device"] = json!(e.device);
        }
        // A remote space's dimension is only known by asking (best effort, as upstream).
        None => {
            let probe = EmbedRequest {
                inputs: vec![crate::providers::embeddings::EmbedInput::Text("dimension probe".into())],
                ..Default::default()
            };
            match p.embed(None, None, &probe).await {
                Ok(d) => out["dimension"] = json!(d.vectors.first().map(Vec::len).unwrap_or(0)),
                Err(e) => out["error"] = json!(e.to_string()),
            }
        }
    }
    Json(out)
}

async fn models(Extension(p): Extension<Arc<Providers>>, RawQuery(rq): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(rq.as_deref());
    let providers_only = query_bool(&q, "providers_only", false)?;
    let provider = q.get("provider").cloned();
    let mut items: Vec<Value> = p
        .local
        .embedders
        .iter()
        .map(|e| {
            json!({"id": e.info.id, "name": e.info.id, "provider": "local", "available": e.engine.is_running(),
                   "task": EMBEDDING_ROUTE, "dimension": e.dimension, "max_tokens": e.max_tokens, "pooling": e.pooling,
                   "normalized": e.normalize, "architecture": e.info.architecture, "size_bytes": e.info.size_bytes, "device": e.device,
                   "stats": engine_stats(&e.engine.stats)})
        })
        .collect();
    for t in p.route.named(EMBEDDING_ROUTE).chain().into_iter().filter(|t| !t.is_local()) {
        let health = p.breakers.view(&t.key());
        items.push(
            json!({"id": t.model, "name": t.model, "provider": t.provider, "available": health.state != "open",
                          "task": EMBEDDING_ROUTE, "base_url": t.resolved_base_url(), "health": health}),
        );
    }
    if let Some(f) = provider.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        items.retain(|i| i["provider"].as_str() == Some(f));
    }
    let mut providers: Vec<String> = items.iter().filter_map(|i| i["provider"].as_str().map(str::to_string)).collect();
    providers.dedup();
    let available = items.iter().any(|i| i["available"] == true);
    let mut by_provider = serde_json::Map::new();
    for i in &items {
        let prov = i["provider"].as_str().unwrap_or("").to_string();
        let list = by_provider.entry(prov).or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(i["id"].clone());
        }
    }
    let names: Vec<&str> = providers.iter().map(String::as_str).collect();
    let payload = json!({
        "available": available, "kind": "embedding_models", "scope": EMBEDDING_ROUTE, "provider": provider,
        "providers": providers, "models_by_provider": by_provider, "provider_models": items,
    });
    Ok(Json(with_model_catalog(
        payload,
        "embedding",
        EMBEDDING_ROUTE,
        &items,
        &names,
        providers_only,
    )))
}

/// What the engine has done: requests, inputs, tokens, and the forward passes they were packed
/// into (padded tokens over tokens is the padding overhead).
fn engine_stats(st: &abstractgateway_engines::embedding::EmbeddingStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({"requests": st.requests.load(Relaxed), "inputs": st.inputs.load(Relaxed), "tokens": st.tokens.load(Relaxed),
           "forward_passes": st.forward_passes.load(Relaxed), "padded_tokens": st.padded_tokens.load(Relaxed),
           "failed": st.failed.load(Relaxed), "rejected": st.rejected.load(Relaxed), "in_flight": st.in_flight.load(Relaxed)})
}
