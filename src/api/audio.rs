//! Upstream's audio catalogs (spec §1.9): `GET /audio/transcriptions/models` lists the
//! speech-to-text models loaded here and the `input.voice` route's remote targets, in the
//! `gateway_catalog_v1` envelope. Only what is loaded (or routed) is reported.

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::discovery::with_model_catalog;
use super::error::ApiResult;
use super::validate::{query_bool, query_map};
use super::{route, Route};
use crate::providers::transcription::TRANSCRIPTION_ROUTE;
use crate::providers::Providers;

pub fn routes() -> Vec<Route> {
    vec![route(
        "get",
        "/api/gateway/audio/transcriptions/models",
        "Speech-to-text models loaded here (gateway_catalog_v1)",
        &["provider", "providers_only"],
        get(transcription_models),
    )
    .errors(&[422])]
}

/// What the engine has done, for operators.
fn stats(st: &abstractgateway_engines::stt::engine::SttStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({"requests": st.requests.load(Relaxed), "failed": st.failed.load(Relaxed), "rejected": st.rejected.load(Relaxed),
           "encoder_passes": st.encoder_passes.load(Relaxed), "windows": st.windows.load(Relaxed),
           "audio_seconds": st.audio_ms.load(Relaxed) as f64 / 1000.0, "in_flight": st.in_flight.load(Relaxed)})
}

/// The loaded transcribers, then the route's remote targets, as catalog items.
pub fn transcription_items(p: &Providers) -> Vec<Value> {
    let remote = p
        .route
        .named(TRANSCRIPTION_ROUTE)
        .chain()
        .into_iter()
        .filter(|t| !t.is_local())
        .map(|t| {
            let health = p.breakers.view(&t.key());
            json!({"id": t.model, "label": t.model, "provider": t.provider, "available": health.state != "open",
               "task": TRANSCRIPTION_ROUTE, "base_url": t.resolved_base_url(), "health": health})
        });
    p.local
        .transcribers
        .iter()
        .map(|t| {
            let tasks = if t.engine.multilingual {
                json!(["transcribe", "translate"])
            } else {
                json!(["transcribe"])
            };
            json!({"id": t.info.id, "label": t.info.id, "provider": "local", "available": t.engine.is_running(),
                   "task": TRANSCRIPTION_ROUTE, "tasks": tasks, "languages": t.engine.languages,
                   "parameters": ["language", "prompt", "temperature", "response_format"],
                   "architecture": t.info.architecture, "size_bytes": t.info.size_bytes, "device": t.device,
                   "stats": stats(&t.engine.stats)})
        })
        .chain(remote)
        .collect()
}

async fn transcription_models(Extension(p): Extension<Arc<Providers>>, RawQuery(rq): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(rq.as_deref());
    let providers_only = query_bool(&q, "providers_only", false)?;
    let mut items = transcription_items(&p);
    if let Some(f) = q.get("provider").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        items.retain(|i| i["provider"].as_str() == Some(f));
    }
    let available = items.iter().any(|i| i["available"] == true);
    let mut providers: Vec<&str> = items.iter().filter_map(|i| i["provider"].as_str()).collect();
    providers.dedup();
    let payload = json!({"available": available, "kind": "audio_transcription_models", "scope": TRANSCRIPTION_ROUTE,
                         "providers": providers, "models": items});
    Ok(Json(with_model_catalog(
        payload,
        "stt",
        TRANSCRIPTION_ROUTE,
        &items,
        &providers,
        providers_only,
    )))
}
