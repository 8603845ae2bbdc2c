//! Discovery (part of the upstream contract): which providers can serve text here, with live
//! health. Nothing claims to work that does not: local models are listed only when loaded, and
//! remote targets carry their circuit-breaker state.

use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::{route, Route};
use crate::providers::Providers;

pub fn routes() -> Vec<Route> {
    vec![route(
        "get",
        "/api/gateway/discovery/providers",
        "Text providers usable on this host, with health (gateway_catalog_v1)",
        &[],
        get(providers),
    )]
}

async fn providers(Extension(p): Extension<Arc<Providers>>) -> Json<Value> {
    let mut items = Vec::new();
    if !p.local.models.is_empty() {
        let running = p.local.models.iter().all(|m| m.engine.is_running());
        use std::sync::atomic::Ordering::Relaxed;
        let engines: Vec<Value> = p
            .local
            .models
            .iter()
            .map(|m| {
                let s = &m.engine.stats;
                let (steps, rows) = (s.batch_steps.load(Relaxed), s.batched_tokens.load(Relaxed));
                json!({
                    "model": m.info.id, "backend": m.backend, "context": m.context, "running": m.engine.is_running(),
                    "in_flight": s.in_flight.load(Relaxed), "completed": s.completed.load(Relaxed),
                    "cancelled": s.cancelled.load(Relaxed), "failed": s.failed.load(Relaxed),
                    "prompt_tokens": s.prompt_tokens.load(Relaxed), "completion_tokens": s.completion_tokens.load(Relaxed),
                    "cached_prompt_tokens": s.cached_tokens.load(Relaxed), "prefix_cache_bytes": s.prefix_cache_bytes.load(Relaxed),
                    "mean_batch": if steps > 0 { rows as f64 / steps as f64 } else { 0.0 },
                })
            })
            .collect();
        items.push(json!({
            "id": "local", "label": "Local engine (in-process)", "provider": "local", "available": running,
            "models": p.local.models.iter().map(|m| m.info.id.clone()).collect::<Vec<_>>(),
            "engines": engines,
        }));
    }
    let route = p.route.text();
    for (i, t) in route.chain().into_iter().enumerate().filter(|(_, t)| !t.is_local()) {
        let health = p.breakers.view(&t.key());
        items.push(json!({
            "id": t.key(), "label": t.label(), "provider": t.provider, "model": t.model,
            "base_url": t.resolved_base_url(), "route": "input.text", "position": i,
            "available": health.state != "open", "health": health,
        }));
    }
    Json(json!({
        "catalog": {"contract": "gateway_catalog_v1", "version": 1, "kind": "providers"},
        "items": items,
        "default": route.primary.as_ref().map(|t| t.label()),
    }))
}
