//! Discovery (the upstream contract, `contracts.version` 1): what this gateway serves and which
//! providers can serve text here, with live health. Nothing claims to work that does not: an
//! endpoint is advertised as available only if the router serves it (read from the same route
//! table), local models only when loaded and running, remote providers with their breaker state
//! and, for model lists, only after they answered.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::{route, Route};
use crate::providers::Providers;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/gateway/discovery/providers",
            "Text providers usable on this host, with health (gateway_catalog_v1)",
            &[],
            get(providers),
        ),
        route(
            "get",
            "/api/gateway/discovery/capabilities",
            "What this gateway serves: the versioned client contract (runs, commands, ledger, streaming, discovery) and live text availability",
            &[],
            get(capabilities),
        ),
        route(
            "get",
            "/api/gateway/discovery/tools",
            "The agent's tools (OpenAI tool specs), whether runs can use them here, and which need approval (gateway_catalog_v1)",
            &[],
            get(tools),
        ),
        route(
            "get",
            "/api/gateway/discovery/providers/{provider}/models",
            "Models of one provider: loaded local models, or a remote provider's live list (gateway_catalog_v1)",
            &[],
            get(provider_models),
        )
        .errors(&[400]),
    ]
}

/// (method, path) of every operation the router serves: the source of every `available` flag.
fn served() -> &'static Vec<(&'static str, &'static str)> {
    static SERVED: std::sync::OnceLock<Vec<(&'static str, &'static str)>> = std::sync::OnceLock::new();
    SERVED.get_or_init(|| super::routes().into_iter().map(|r| (r.method, r.path)).collect())
}

fn endpoint(method: &str, path: &'static str) -> Value {
    json!({"available": served().iter().any(|(m, p)| *m == method && *p == path), "endpoint": path})
}

fn catalog(kind: &str, scope: &str, available: bool, items: Vec<Value>, extra: Value) -> Value {
    let mut cat = json!({
        "contract": "gateway_catalog_v1", "version": 1, "kind": kind, "scope": scope,
        "primary_items_field": "items", "source": "abstractgateway.catalog", "available": available,
        "route_available": true,
    });
    if let (Some(c), Some(e)) = (cat.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    json!({"catalog": cat, "items": items})
}

/// A route's model catalog (`/embeddings/models`, `/audio/transcriptions/models`) added to
/// `payload`: its models as `items`, or with `providers_only` one item per provider, and the
/// `gateway_catalog_v1` envelope.
pub(crate) fn with_model_catalog(
    mut payload: Value,
    scope: &str,
    task: &str,
    items: &[Value],
    providers: &[&str],
    providers_only: bool,
) -> Value {
    let available = items.iter().any(|i| i["available"] == true);
    let (kind, listed) = if providers_only {
        (
            "providers",
            providers.iter().map(|pv| json!({"id": pv, "label": pv, "provider": pv})).collect(),
        )
    } else {
        ("models", items.to_vec())
    };
    let extra = json!({"route_source": "abstractgateway.local", "task": task, "providers_only": providers_only});
    if let (Some(p), Value::Object(c)) = (payload.as_object_mut(), catalog(kind, scope, available, listed, extra)) {
        p.extend(c);
    }
    payload
}

/// Loaded local models as catalog items.
fn local_items(p: &Providers) -> Vec<Value> {
    p.local
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m.info.id, "name": m.info.id, "provider": "local", "available": m.engine.is_running(),
                "context_length": m.context, "backend": m.backend, "architecture": m.info.architecture,
                "quantization": m.info.quantization, "format": m.info.format, "size_bytes": m.info.size_bytes,
                "device": m.device, "dtype": m.dtype(),
                "device_free_bytes": abstractgateway_engines::device::free_bytes(&m.candle_device),
            })
        })
        .collect()
}

async fn capabilities(
    Extension(p): Extension<Arc<Providers>>,
    Extension(st): Extension<super::AppState>,
    principal: Option<Extension<crate::security::principal::Principal>>,
) -> Json<Value> {
    use crate::runtime::commands::TYPES;
    let local = local_items(&p);
    let local_up = local.iter().any(|m| m["available"] == true);
    let route = p.route.text();
    let remotes = remote_targets(&p, &route);
    let remote_up = remotes.iter().any(|r| r["available"] == true);
    let embedding = embedding_capability(&p);
    let embedding_up = embedding["available"].as_bool().unwrap_or(false);
    let stt_models = crate::api::audio::transcription_items(&p);
    let stt_up = stt_models.iter().any(|m| m["available"] == true);
    let tts_models = crate::api::audio::speech_items(&p);
    let tts_up = tts_models.iter().any(|m| m["available"] == true);
    let d = |m, path| endpoint(m, path);
    let commands = {
        let mut c = d("post", "/api/gateway/commands");
        c["types"] = json!(TYPES);
        c
    };
    let stream = {
        let mut s = d("get", "/api/gateway/runs/{run_id}/ledger/stream");
        s["transport"] = json!("sse");
        s
    };
    let runs = json!({
        "start": d("post", "/api/gateway/runs/start"),
        "schedule": d("post", "/api/gateway/runs/schedule"),
        "summary": d("get", "/api/gateway/runs/{run_id}"),
        "list": d("get", "/api/gateway/runs"),
        "input_data": d("get", "/api/gateway/runs/{run_id}/input_data"),
        "history_bundle": d("get", "/api/gateway/runs/{run_id}/history_bundle"),
        "commands": commands,
    });
    let artifacts = json!({
        "run_list": d("get", "/api/gateway/runs/{run_id}/artifacts"),
        "session_list": d("get", "/api/gateway/sessions/{session_id}/artifacts"),
        "metadata": d("get", "/api/gateway/runs/{run_id}/artifacts/{artifact_id}"),
        "content": d("get", "/api/gateway/runs/{run_id}/artifacts/{artifact_id}/content"),
        "search": d("get", "/api/gateway/artifacts/search"),
        "stats": d("get", "/api/gateway/artifacts/stats"),
    });
    let upload = d("post", "/api/gateway/attachments/upload");
    let ledger = json!({
        "replay": d("get", "/api/gateway/runs/{run_id}/ledger"),
        "batch": d("post", "/api/gateway/runs/ledger/batch"),
        "stream": stream,
    });
    let discovery = json!({
        "capabilities": "/api/gateway/discovery/capabilities",
        "providers": "/api/gateway/discovery/providers",
        "provider_models": "/api/gateway/discovery/providers/{provider}/models",
        "tools": "/api/gateway/discovery/tools",
        "embedding_models": "/api/gateway/embeddings/models",
        "audio_transcription_models": "/api/gateway/audio/transcriptions/models",
        "catalog_contract": "gateway_catalog_v1",
    });
    let flag = |v: &Value| v["available"].as_bool().unwrap_or(false);
    // Upstream's media descriptors, for the speech this gateway serves as run routes.
    let media_entry = |available: bool, path: &'static str, workflow: &str, task: &str| {
        let mut e = d("post", path);
        e["available"] = json!(available);
        json!({"available": available, "direct_endpoint": e, "workflow": workflow, "node": if task == "tts" { "generate_voice" } else { "transcribe_audio" },
               "progress_event_name": crate::runtime::media::PROGRESS_EVENT, "provider_models_task": task})
    };
    let media = json!({
        "generated_voice": media_entry(tts_up, "/api/gateway/runs/{run_id}/voice/tts", crate::runtime::media::TTS_WORKFLOW, "tts"),
        "transcription": media_entry(stt_up, "/api/gateway/runs/{run_id}/audio/transcribe", crate::runtime::media::STT_WORKFLOW, "stt"),
    });
    let admin = principal.as_ref().is_some_and(|p| p.is_admin());
    let prompt_cache = prompt_cache_descriptor(&p, admin);
    let readiness = json!({
        "contract": "gateway_surface_readiness_v1", "version": 1, "truth_scope": "gateway_contract_surface",
        "limitations": [
            "of the LLM-facing and media nodes, llm_call, agent, generate_voice and transcribe_audio are served; other LLM/media node types (images, video, music) fail with a clear error",
            "llm.delta frames reach SSE readers of the process that executes the LLM call (serve), for the run itself, not its subtree",
            "memory: the knowledge graph (memory_kg_assert, memory_kg_query, memory_kg_resolve, POST /kg/query) and notes (memory_note, memory_query) are served; memory_tag and memory_rehydrate are not",
            "of the media surfaces only speech is served (run routes voice/tts and audio/transcribe, /v1/audio/*); image, video and music generation and vision are not; embeddings are served on /v1/embeddings and /api/gateway/embeddings",
        ],
        "surfaces": {
            "runs": {"start": flag(&runs["start"]), "schedule": flag(&runs["schedule"]), "summary": flag(&runs["summary"]),
                     "list": flag(&runs["list"]), "input_data": flag(&runs["input_data"]),
                     "history_bundle": flag(&runs["history_bundle"]), "commands": flag(&runs["commands"])},
            "artifacts": artifacts.as_object().map(|a| a.iter().map(|(k, v)| (k.clone(), json!(flag(v)))).collect::<serde_json::Map<_, _>>()),
            "attachments": {"upload": flag(&upload), "max_upload_bytes": st.cfg.max_attachment_bytes},
            "workspace": {"policy": flag(&d("get", "/api/gateway/workspace/policy"))},
            "ledger": {"replay": flag(&ledger["replay"]), "batch": flag(&ledger["batch"]), "stream": flag(&ledger["stream"]), "stream_transport": "sse"},
            "discovery": {"capabilities": true, "providers": true, "provider_models": true, "tools": true},
            "text": {"available": local_up || remote_up, "local": local_up, "remote": remote_up},
            "embedding": {"available": embedding_up},
            "audio": {"transcription": stt_up, "speech": tts_up},
            "voice": {"available": tts_up},
            "media": {
                "generated_voice": {"available": tts_up, "route_available": true, "workflow_available": true},
                "transcription": {"available": stt_up, "route_available": true, "workflow_available": true},
                "generated_image": {"available": false, "route_available": false, "workflow_available": false},
            },
            "memory": {"kg_query": flag(&d("post", "/api/gateway/kg/query")), "kg_assert_node": true, "kg_query_node": true,
                       "kg_resolve_node": true, "note_node": true, "query_node": true, "semantic": embedding_up, "backend": st.kg.name()},
            "prompt_cache": {"provider_controls": prompt_cache["provider_controls_available"], "session_lifecycle": prompt_cache["session_lifecycle_available"],
                             "durable_blocs": false},
        },
    });
    Json(json!({"capabilities": {
        "abstractgateway": {"installed": true, "version": env!("CARGO_PKG_VERSION"), "implementation": "rust"},
        // Token deltas of llm_call/agent nodes, when the run sets `_runtime.stream`.
        "streaming": {"deltas": true, "default": false, "run_field": "_runtime.stream", "events": ["llm.delta", "llm.delta_end"], "subtree": false,
                      "endpoint": "/api/gateway/runs/{run_id}/ledger/stream", "end_reasons": ["completed", "failed", "cancelled", "unavailable"]},
        "text": {"available": local_up || remote_up, "route": "input.text", "default": route.primary.as_ref().map(|t| t.label()),
                 "local_models": local, "remote": remotes,
                 "openai_compatible": d("post", "/v1/chat/completions")},
        "embedding": embedding,
        // Speech-to-text: whisper models loaded here (upstream's `audio` capability).
        "audio": {"available": stt_up, "route": crate::providers::transcription::TRANSCRIPTION_ROUTE, "local_models": stt_models,
                  "catalog": "/api/gateway/audio/transcriptions/models",
                  "openai_compatible": {"transcriptions": d("post", "/v1/audio/transcriptions"), "translations": d("post", "/v1/audio/translations")}},
        // Text-to-speech: Piper voices loaded here (upstream's `voice` capability).
        "voice": {"available": tts_up, "route": crate::providers::speech::SPEECH_ROUTE, "local_models": tts_models,
                  "catalogs": {"voices": "/api/gateway/voice/voices", "models": "/api/gateway/audio/speech/models"},
                  "openai_compatible": {"speech": d("post", "/v1/audio/speech")}},
        "contracts": {"version": 1, "common": {"runs": runs, "ledger": ledger, "artifacts": artifacts,
            "attachments": {"upload": upload, "max_upload_bytes": st.cfg.max_attachment_bytes}, "discovery": discovery, "readiness": readiness,
            "memory": {"kg_query": d("post", "/api/gateway/kg/query"), "backend": st.kg.name(), "semantic_query": embedding_up},
            "prompt_cache": prompt_cache, "media": media}},
    }}))
}

/// Upstream's `common.prompt_cache` descriptor: the local engine's control plane (writes for
/// admins only), the session lifecycle routes, and no durable blocs.
fn prompt_cache_descriptor(p: &Providers, admin: bool) -> Value {
    let base = "/api/gateway/prompt_cache";
    let endpoints: serde_json::Map<String, Value> = [
        "capabilities",
        "stats",
        "set",
        "update",
        "fork",
        "clear",
        "prepare_modules",
        "saved",
        "save",
        "load",
    ]
    .iter()
    .map(|op| (op.to_string(), json!(format!("{base}/{op}"))))
    .collect();
    let sessions: serde_json::Map<String, Value> = ["status", "prepare", "clear", "rebuild"]
        .iter()
        .map(|op| {
            (
                op.to_string(),
                json!(format!("/api/gateway/sessions/{{session_id}}/prompt_cache/{op}")),
            )
        })
        .collect();
    let local = p.local.models.iter().any(|m| m.engine.is_running());
    let mut d = json!({"provider_controls": true, "provider_controls_available": local && admin, "session_lifecycle": true,
        "session_lifecycle_available": local, "durable_blocs": false, "endpoints": endpoints, "session_endpoints": sessions,
        "mode": if local { "local_control_plane" } else { "none" }});
    if !admin {
        d["provider_controls_denied_reason"] = json!("admin_required");
        d["provider_controls_required_role"] = json!("admin");
        d["provider_controls_resource_class"] = json!("prompt_cache");
    }
    d
}

/// A route's remote targets with their breaker state (available unless the circuit is open).
fn remote_targets(p: &Providers, route: &crate::providers::defaults::Route) -> Vec<Value> {
    route
        .chain()
        .into_iter()
        .filter(|t| !t.is_local())
        .map(|t| {
            let health = p.breakers.view(&t.key());
            json!({"provider": t.provider, "model": t.model, "available": health.state != "open", "health": health})
        })
        .collect()
}

/// Embeddings: available only with a model loaded and running here, or a remote target on the
/// `embedding.text` route whose breaker is not open.
fn embedding_capability(p: &Providers) -> Value {
    use crate::providers::embeddings::EMBEDDING_ROUTE;
    let local: Vec<Value> = p
        .local
        .embedders
        .iter()
        .map(|e| json!({"id": e.info.id, "provider": "local", "available": e.engine.is_running(), "dimension": e.dimension, "max_tokens": e.max_tokens, "device": e.device}))
        .collect();
    let remote = remote_targets(p, &p.route.named(EMBEDDING_ROUTE));
    let up = local.iter().chain(&remote).any(|m| m["available"] == true);
    json!({"available": up, "route": EMBEDDING_ROUTE, "default": p.embedding_chain(None, None).ok().and_then(|c| c.first().map(|t| t.label())),
           "local_models": local, "remote": remote,
           "endpoint": endpoint("post", "/api/gateway/embeddings"), "openai_compatible": endpoint("post", "/v1/embeddings")})
}

/// The tools `agent` nodes can call: executed by this process's effect worker inside the run's
/// workspace; side-effect tools wait for approval first.
async fn tools(Extension(st): Extension<crate::api::AppState>) -> Json<Value> {
    use crate::runtime::tools::TOOLS;
    let items: Vec<Value> = TOOLS
        .iter()
        .map(|t| {
            let mut v = t.openai();
            v["name"] = json!(t.name);
            v["available"] = json!(true);
            v["requires_approval"] = json!(t.side_effects && st.cfg.tools_need_approval());
            v
        })
        .chain(["fetch_url", "web_search"].into_iter().map(|name| {
            json!({"name": name, "available": false, "requires_approval": false,
                   "unavailable_reason": "this gateway runs offline: no network access is configured for tools"})
        }))
        .collect();
    let extra = json!({"workspace": "per session, <data_dir>/workspaces/<session_id> (the session id defaults to the run id)",
                       "builtins": ["ask_user"]});
    let mut body = catalog("tools", "agent", true, items, extra);
    body["tool_mode"] = json!(st.cfg.tool_mode);
    Json(body)
}

async fn provider_models(Extension(p): Extension<Arc<Providers>>, Path(provider): Path<String>) -> (StatusCode, Json<Value>) {
    if provider == "local" {
        let items = local_items(&p);
        let up = items.iter().any(|m| m["available"] == true);
        let mut body = catalog("models", "text", up, items.clone(), json!({"provider": "local"}));
        body["models"] = json!(items.iter().map(|m| m["id"].clone()).collect::<Vec<_>>());
        return (StatusCode::OK, Json(body));
    }
    let route = p.route.text();
    let targets: Vec<_> = route.chain().into_iter().filter(|t| t.provider == provider).collect();
    if targets.is_empty() {
        let mut known: Vec<String> = vec!["local".to_string()];
        for t in route.chain().into_iter().filter(|t| !t.is_local()) {
            if !known.contains(&t.provider) {
                known.push(t.provider);
            }
        }
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": format!("provider '{provider}' is not configured here (configured: {})", known.join(", "))})),
        );
    }
    // Several targets may share a provider name (different base URLs): ask each once.
    let mut seen = Vec::new();
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    for t in &targets {
        let base = t.resolved_base_url();
        if seen.contains(&base) {
            continue;
        }
        seen.push(base.clone());
        match p.remote_models(t).await {
            Ok(list) => items.extend(list.iter().filter_map(|m| m["id"].as_str()).map(|id| {
                json!({"id": id, "name": id, "provider": provider, "base_url": base, "available": true,
                       "configured": targets.iter().any(|x| x.model == id && x.resolved_base_url() == base)})
            })),
            Err(e) => errors.push(json!({"base_url": base, "error": e.to_string(), "health": p.breakers.view(&t.key())})),
        }
    }
    // An unreachable provider is an empty, unavailable catalog with the reason, not a 5xx: the
    // gateway itself is fine, and a client shows the reason.
    let available = !items.is_empty() || errors.len() < seen.len();
    let mut extra = json!({"provider": provider, "errors": errors});
    if !available {
        extra["error"] = json!(errors.iter().filter_map(|e| e["error"].as_str()).collect::<Vec<_>>().join("; "));
    }
    let mut body = catalog("models", "text", available, items.clone(), extra);
    body["models"] = json!(items.iter().map(|m| m["id"].clone()).collect::<Vec<_>>());
    (StatusCode::OK, Json(body))
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
                // The models whose KV pools draw on the same budget as this one (a device's
                // dense models share one), and what they hold of it together.
                let budget = s.kv_budget.get();
                let shared_with: Vec<&str> = p
                    .local
                    .models
                    .iter()
                    .filter(|o| o.info.id != m.info.id)
                    .filter(|o| matches!((budget, o.engine.stats.kv_budget.get()), (Some(a), Some(b)) if Arc::ptr_eq(a, b)))
                    .map(|o| o.info.id.as_str())
                    .collect();
                json!({
                    "model": m.info.id, "backend": m.backend, "context": m.context, "running": m.engine.is_running(),
                    "in_flight": s.in_flight.load(Relaxed), "capacity": s.capacity.load(Relaxed), "rejected": s.rejected.load(Relaxed),
                    "completed": s.completed.load(Relaxed),
                    "cancelled": s.cancelled.load(Relaxed), "failed": s.failed.load(Relaxed),
                    "prompt_tokens": s.prompt_tokens.load(Relaxed), "completion_tokens": s.completion_tokens.load(Relaxed),
                    "cached_prompt_tokens": s.cached_tokens.load(Relaxed), "prefix_cache_bytes": s.prefix_cache_bytes.load(Relaxed),
                    "kv_pool_bytes": s.kv_pool_bytes.load(Relaxed), "kv_limit_bytes": s.kv_limit_bytes.load(Relaxed),
                    "kv_budget_used_bytes": budget.map_or(0, |b| b.used_bytes()), "kv_limit_shared_with": shared_with,
                    "mean_batch": if steps > 0 { rows as f64 / steps as f64 } else { 0.0 },
                    "weights_pages": s.weights.get().map(|w| w.pages().name()),
                    "kv_tiers": s.tiers.get().map(|t| json!({
                        "host_entries": t.host_entries.load(Relaxed), "host_bytes": t.host_bytes.load(Relaxed),
                        "disk_entries": t.disk_entries.load(Relaxed), "disk_bytes": t.disk_bytes.load(Relaxed),
                        "host_hits": t.host_hits.load(Relaxed), "disk_hits": t.disk_hits.load(Relaxed),
                        "disk_writes": t.disk_writes.load(Relaxed), "disk_write_failures": t.disk_write_failures.load(Relaxed),
                        "disk_rejected": t.disk_rejected.load(Relaxed),
                    })),
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
    let available = items.iter().any(|i| i["available"] == true);
    let mut body = catalog("providers", "text", available, items, json!({}));
    body["default"] = json!(route.primary.as_ref().map(|t| t.label()));
    Json(body)
}
