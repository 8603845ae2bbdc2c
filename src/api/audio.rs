//! Upstream's audio catalogs (spec §1.9), in the `gateway_catalog_v1` envelope:
//! `GET /audio/transcriptions/models` (speech-to-text models loaded here and the `input.voice`
//! route's remote targets), `/audio/speech/models` (voices loaded here and the `output.voice`
//! route's remote targets) and `/voice/voices` (the voices one can name). Only what is loaded
//! (or routed) is reported; a voice without its phonemizer is listed unavailable, with why.

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::discovery::with_model_catalog;
use super::error::ApiResult;
use super::validate::{query_bool, query_map};
use super::{route, Route};
use crate::providers::speech::{LocalSpeaker, OPENAI_VOICES, SPEECH_ROUTE};
use crate::providers::transcription::TRANSCRIPTION_ROUTE;
use crate::providers::Providers;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/gateway/audio/transcriptions/models",
            "Speech-to-text models loaded here (gateway_catalog_v1)",
            &["provider", "providers_only"],
            get(transcription_models),
        )
        .errors(&[422]),
        route(
            "get",
            "/api/gateway/audio/speech/models",
            "Text-to-speech models (voices) loaded here (gateway_catalog_v1)",
            &["provider", "providers_only"],
            get(speech_models),
        )
        .errors(&[422]),
        route(
            "get",
            "/api/gateway/voice/voices",
            "The voices text-to-speech can speak with (gateway_catalog_v1)",
            &["provider", "model", "providers_only", "compact", "base_url"],
            get(voices),
        )
        .errors(&[422]),
    ]
}

fn tts_stats(st: &abstractgateway_engines::tts::engine::TtsStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({"requests": st.requests.load(Relaxed), "failed": st.failed.load(Relaxed), "rejected": st.rejected.load(Relaxed),
           "cancelled": st.cancelled.load(Relaxed), "characters": st.characters.load(Relaxed),
           "audio_seconds": st.audio_ms.load(Relaxed) as f64 / 1000.0, "in_flight": st.in_flight.load(Relaxed)})
}

fn speaker_item(s: &LocalSpeaker) -> Value {
    let mut v = json!({"id": s.info.id, "label": s.voice, "provider": "local", "available": s.available(),
        "task": SPEECH_ROUTE, "tasks": ["text_to_speech"], "parameters": ["voice", "speed", "response_format", "stream_format", "seed"],
        "voices": [s.voice], "language": s.language, "quality": s.quality, "sample_rate": s.sample_rate,
        "response_formats": ["wav", "flac", "pcm"], "architecture": s.info.architecture, "size_bytes": s.info.size_bytes,
        "device": s.device, "phonemizer": {"program": "espeak-ng", "voice": s.espeak_voice, "version": s.phonemizer}});
    match &s.engine {
        Ok(e) => v["stats"] = tts_stats(&e.stats),
        Err(why) => v["unavailable_reason"] = json!(why),
    }
    v
}

/// The route's remote targets, as catalog items of `task`.
fn remote_items(p: &Providers, route: &str) -> Vec<Value> {
    p.route
        .named(route)
        .chain()
        .into_iter()
        .filter(|t| !t.is_local())
        .map(|t| {
            let health = p.breakers.view(&t.key());
            json!({"id": t.model, "label": t.model, "provider": t.provider, "available": health.state != "open",
               "task": route, "base_url": t.resolved_base_url(), "health": health})
        })
        .collect()
}

/// The voices loaded here, then the route's remote targets.
pub fn speech_items(p: &Providers) -> Vec<Value> {
    p.local
        .speakers
        .iter()
        .map(speaker_item)
        .chain(remote_items(p, SPEECH_ROUTE))
        .collect()
}

/// A catalog of `items` filtered by `provider`, in upstream's envelope.
fn catalog(
    items: Vec<Value>,
    q: &std::collections::HashMap<String, String>,
    kind: &str,
    tag: &str,
    route: &str,
    field: &str,
) -> ApiResult<Value> {
    let providers_only = query_bool(q, "providers_only", false)?;
    let mut items = items;
    if let Some(f) = q.get("provider").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        items.retain(|i| i["provider"].as_str() == Some(f));
    }
    let available = items.iter().any(|i| i["available"] == true);
    let mut providers: Vec<&str> = items.iter().filter_map(|i| i["provider"].as_str()).collect();
    providers.dedup();
    let payload = json!({"available": available, "kind": kind, "scope": route, "providers": providers, field: items});
    Ok(with_model_catalog(payload, tag, route, &items, &providers, providers_only))
}

async fn speech_models(Extension(p): Extension<Arc<Providers>>, RawQuery(rq): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(rq.as_deref());
    Ok(Json(catalog(
        speech_items(&p),
        &q,
        "audio_speech_models",
        "tts",
        SPEECH_ROUTE,
        "models",
    )?))
}

/// Each loaded voice under its own name (the one `voice` takes), and OpenAI's names as aliases
/// of the route's first voice; remote targets by model.
async fn voices(Extension(p): Extension<Arc<Providers>>, RawQuery(rq): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(rq.as_deref());
    query_bool(&q, "compact", false)?;
    let mut items: Vec<Value> = Vec::new();
    for (i, s) in p.local.speakers.iter().enumerate() {
        items.push(
            json!({"id": s.voice, "label": s.voice, "provider": "local", "model": s.info.id, "voice_kind": "piper",
                          "language": s.language, "available": s.available()}),
        );
        if i == 0 {
            items.extend(OPENAI_VOICES.iter().map(|v| {
                json!({"id": v, "label": format!("{v} (speaks as {})", s.voice), "provider": "local", "model": s.info.id,
                       "voice_kind": "alias", "alias_of": s.voice, "available": s.available()})
            }));
        }
    }
    items.extend(remote_items(&p, SPEECH_ROUTE).into_iter().map(|mut r| {
        r["model"] = r["id"].clone();
        r["voice_kind"] = json!("remote");
        r
    }));
    if let Some(m) = q.get("model").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        items.retain(|i| i["model"].as_str() == Some(m));
    }
    Ok(Json(catalog(items, &q, "voice_voices", "voices", SPEECH_ROUTE, "voices")?))
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
    let remote = remote_items(p, TRANSCRIPTION_ROUTE);
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
    Ok(Json(catalog(
        transcription_items(&p),
        &q,
        "audio_transcription_models",
        "stt",
        TRANSCRIPTION_ROUTE,
        "models",
    )?))
}
