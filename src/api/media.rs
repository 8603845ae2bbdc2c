//! Upstream's run-scoped speech routes (spec §1.10): `POST /runs/{id}/voice/tts` and
//! `POST /runs/{id}/audio/transcribe`.
//!
//! Each request becomes a durable child run of the run named in the path (a session's
//! `session_memory_<sid>` run is created on first use), executed like any run: the effect
//! worker speaks or listens, writes `abstract.progress` records to the child's ledger, and stores
//! the output as an artifact of the parent, tagged `kind=generated_media`. The handler answers
//! when the child ends. The child's id derives from the parent and `request_id`: the same
//! request again (a retry, or a client whose connection dropped) joins the run it started and
//! gets its result, never a second one.
//!
//! What can be checked before a run is started is checked here, with its own status: a missing
//! or empty field (400/422), an unknown voice (400), an artifact the run cannot see (404),
//! audio that cannot be decoded (400/413/415), no engine for the modality (503).

use std::sync::Arc;
use std::time::Duration;

use abstractgateway_engines::audio::decode::decode;
use abstractgateway_engines::audio::AudioError;
use abstractgateway_engines::stt::render::FORMATS;
use abstractgateway_engines::stt::transcribe::SAMPLE_RATE;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::artifacts::{owner_run, visible_artifact};
use super::error::{audio_status, ApiError, ApiResult};
use super::validate::{parse_body, Fields};
use super::{route, AppState, Route};
use crate::providers::{ProviderError, Providers};
use crate::runtime::interpreter::default_limits;
use crate::runtime::media::{child_run_id, STT_WORKFLOW, TTS_WORKFLOW};
use crate::runtime::model::{RunState, RunStatus};
use crate::store::artifacts::id_in_ref;

/// How long a request waits for its child run; past it, the answer says the run goes on and how
/// to get its result (ask again with the same `request_id`).
const MAX_WAIT: Duration = Duration::from_secs(30 * 60);
/// The longest `prompt` a transcription takes (upstream's limit).
const MAX_PROMPT_CHARS: usize = 20_000;

pub fn routes() -> Vec<Route> {
    let ok = |extra: Value| {
        let mut props = json!({"ok": {"type": "boolean"}, "run_id": {"type": "string"}, "request_id": {"type": "string"},
            "child_run_id": {"type": "string"}});
        if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"type": "object", "required": ["ok", "run_id", "request_id", "child_run_id"], "properties": props})
    };
    let s = || json!({"type": ["string", "null"]});
    vec![
        route(
            "post",
            "/api/gateway/runs/{run_id}/voice/tts",
            "Speak text as a durable child run; the audio is stored as an artifact of the run",
            &[],
            post(tts),
        )
        .errors(&[400, 404, 422, 500, 503, 504])
        .body(
            json!({"application/json": {"schema": {"type": "object", "required": ["text"], "properties": {
            "text": {"type": "string"}, "voice": s(), "model": s(), "provider": s(), "profile": s(),
            "format": {"enum": ["wav", "flac", "mp3", null], "description": "wav (default) or flac; mp3 is refused"},
            "speed": {"type": ["number", "null"], "minimum": 0.25, "maximum": 4.0}, "quality_preset": s(), "quality": s(),
            "instructions": s(), "request_id": s(), "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 9_007_199_254_740_991_u64}}}}}),
        )
        .ok_json(ok(json!({"audio_artifact": {"type": "object"}}))),
        route(
            "post",
            "/api/gateway/runs/{run_id}/audio/transcribe",
            "Transcribe an audio artifact as a durable child run; the transcript is stored as an artifact",
            &[],
            post(transcribe),
        )
        .errors(&[400, 404, 413, 415, 422, 500, 503, 504])
        .body(
            json!({"application/json": {"schema": {"type": "object", "required": ["audio_artifact"], "properties": {
            "audio_artifact": {"type": ["object", "string"], "description": "an artifact ref (or id) the run can see"},
            "language": s(), "provider": s(), "model": s(), "prompt": s(),
            "response_format": {"enum": ["json", "text", "srt", "vtt", "verbose_json", null]},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 1}, "format": s(), "request_id": s()}}}}),
        )
        .ok_json(ok(json!({"text": {"type": "string"}, "transcript_artifact": {"type": "object"}}))),
    ]
}

fn unavailable(e: ProviderError) -> ApiError {
    match e {
        ProviderError::Invalid(m) => ApiError::bad_request(m),
        e @ ProviderError::ModelNotFound(_) => ApiError::not_found(e.to_string()),
        other => ApiError::Status(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// A number field in `range`, as upstream's validation reports a bad one (422).
fn number(m: &Map<String, Value>, k: &str, range: std::ops::RangeInclusive<f64>) -> ApiResult<Option<f64>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if range.contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                "value_error",
                json!(["body", k]),
                format!("Input should be a number from {} to {}", range.start(), range.end()),
                v.clone(),
            )),
        },
    }
}

async fn tts(
    Extension(st): Extension<AppState>,
    Extension(p): Extension<Arc<Providers>>,
    Path(run_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let text = f.req_str("text");
    let [voice, model, format, request_id] =
        ["voice", "model", "format", "request_id"].map(|k| f.opt_str(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    for k in ["provider", "profile", "quality_preset", "quality", "instructions"] {
        f.opt_str(k);
    }
    let seed = f.opt_int("seed", 0);
    f.finish()?;
    let speed = number(&m, "speed", 0.25..=4.0)?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("text is required: there is nothing to speak"));
    }
    let chars = text.chars().count();
    if chars > st.cfg.tts_max_chars {
        return Err(ApiError::bad_request(format!(
            "text is {chars} characters; the limit is {}",
            st.cfg.tts_max_chars
        )));
    }
    let format = format.unwrap_or_else(|| "wav".into()).to_lowercase();
    if !["wav", "flac"].contains(&format.as_str()) {
        return Err(ApiError::bad_request(format!(
            "format '{format}' is not supported here (no well-kept pure-Rust encoder for it): use wav or flac"
        )));
    }
    let parent = owner_run(&st, &run_id).await?;
    // No voice for the route is a 503 now, not a failed run later; so is an unknown voice a 400.
    let chain = p.speech_chain(model.as_deref()).map_err(unavailable)?;
    if chain.iter().all(|t| t.is_local()) {
        let speakers: Vec<_> = chain.iter().filter_map(|t| p.speaker(Some(&t.model)).ok()).collect();
        if let Some(why) = speakers
            .iter()
            .find_map(|s| s.engine.as_ref().err())
            .filter(|_| speakers.iter().all(|s| !s.available()))
        {
            return Err(ApiError::Status(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no voice can speak: {why}"),
            ));
        }
        if let (Some(v), Some(s)) = (&voice, speakers.first()) {
            s.check_voice(v).map_err(unavailable)?;
        }
    }
    let inputs = json!({"text": text, "voice": voice, "model": model, "format": format, "speed": speed, "seed": seed});
    let (request_id, child) = run_child(&st, &parent, "tts", TTS_WORKFLOW, request_id, inputs).await?;
    let out = child_output(&child, "voice/tts")?;
    let mut answer = json!({"ok": true, "run_id": parent.run_id, "request_id": request_id, "child_run_id": child.run_id,
        "audio_artifact": out.get("audio_artifact"), "event_name": crate::runtime::media::PROGRESS_EVENT});
    for k in ["format", "content_type", "duration_s", "sample_rate", "provider", "model"] {
        answer[k] = out.get(k).cloned().unwrap_or(Value::Null);
    }
    Ok(Json(answer))
}

async fn transcribe(
    Extension(st): Extension<AppState>,
    Extension(p): Extension<Arc<Providers>>,
    Path(run_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let [language, model, prompt, response_format, request_id] = ["language", "model", "prompt", "response_format", "request_id"]
        .map(|k| f.opt_str(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
    for k in ["provider", "format"] {
        f.opt_str(k);
    }
    f.finish()?;
    let temperature = number(&m, "temperature", 0.0..=1.0)?;
    let artifact_id = m
        .get("audio_artifact")
        .and_then(|v| v.as_str().or_else(|| id_in_ref(v)))
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request("audio_artifact is required: an artifact ref ({\"artifact_id\": ...}) or id"))?;
    if prompt.as_ref().is_some_and(|p| p.chars().count() > MAX_PROMPT_CHARS) {
        return Err(ApiError::bad_request(format!("prompt is over {MAX_PROMPT_CHARS} characters")));
    }
    let response_format = response_format.unwrap_or_else(|| "text".into());
    if !FORMATS.contains(&response_format.as_str()) {
        return Err(ApiError::bad_request(format!(
            "response_format must be one of {}, not '{response_format}'",
            FORMATS.join(", ")
        )));
    }
    let chain = p.transcription_chain(model.as_deref()).map_err(unavailable)?;
    p.check_language(&chain, language.as_deref()).map_err(unavailable)?;
    let (parent, a) = visible_artifact(&st, &run_id, &artifact_id).await?;
    if a.size_bytes > st.cfg.audio_max_bytes {
        return Err(ApiError::Status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the audio is {} bytes; the limit is {}", a.size_bytes, st.cfg.audio_max_bytes),
        ));
    }
    // Unreadable audio is the client's error, said now: the run would only fail on it.
    let path = st
        .blobs
        .path(&a.blob_id)
        .map_err(|e| ApiError::not_found(format!("artifact content is missing: {e}")))?;
    let (name, max_s) = (a.filename(), st.cfg.stt_max_seconds as f64);
    let probe = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| AudioError::Corrupt(format!("cannot read the artifact: {e}")))?;
        decode(&bytes, name.as_deref(), SAMPLE_RATE as u32, max_s).map(|_| ())
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("decoding the audio failed: {e}")))?;
    if let Err(e) = probe {
        return Err(ApiError::Status(audio_status(&e), format!("audio_artifact '{artifact_id}': {e}")));
    }
    let inputs = json!({"audio_artifact": a.to_ref(), "language": language, "prompt": prompt, "model": model,
        "response_format": response_format, "temperature": temperature});
    let (request_id, child) = run_child(&st, &parent, "stt", STT_WORKFLOW, request_id, inputs).await?;
    let out = child_output(&child, "audio/transcribe")?;
    let mut answer = json!({"ok": true, "run_id": parent.run_id, "request_id": request_id, "child_run_id": child.run_id,
        "text": out.get("text"), "transcript_artifact": out.get("transcript_artifact"),
        "event_name": crate::runtime::media::PROGRESS_EVENT});
    for k in ["language", "duration_s", "provider", "model"] {
        answer[k] = out.get(k).cloned().unwrap_or(Value::Null);
    }
    Ok(Json(answer))
}

/// Starts (or joins) the child run of `op` for `request_id` and waits for it to end.
async fn run_child(
    st: &AppState,
    parent: &RunState,
    op: &str,
    workflow: &str,
    request_id: Option<String>,
    inputs: Value,
) -> ApiResult<(String, RunState)> {
    let request_id = request_id.unwrap_or_else(crate::util::new_uuid);
    let id = child_run_id(&parent.run_id, op, &request_id);
    let mut vars = inputs.as_object().cloned().unwrap_or_default();
    vars.insert(
        "_media".into(),
        json!({"owner_run_id": parent.run_id, "request_id": request_id, "source": "route", "op": op}),
    );
    vars.insert("_limits".into(), default_limits());
    let flow = crate::runtime::media::flow(workflow).map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let session = parent.session_id.clone().unwrap_or_else(|| parent.run_id.clone());
    let mut child = crate::runtime::start::new_run(&flow, vars, Some(session), Some(parent.run_id.clone()));
    child.run_id = id.clone();
    if st.blocking(move |s| s.ensure_run(&child)).await? {
        tracing::info!(run_id = %id, parent_run_id = %parent.run_id, request_id = %request_id, op, "media child run started");
        st.notifier.wake_runner();
    } else {
        tracing::info!(run_id = %id, request_id = %request_id, op, "media request repeated: joining its run");
    }
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        let changed = st.notifier.watch_run(&id);
        let notified = changed.notified();
        let id2 = id.clone();
        let run = st
            .blocking(move |s| s.get_run(&id2))
            .await?
            .ok_or_else(|| ApiError::run_not_found(&id))?;
        if run.status.is_terminal() {
            return Ok((request_id, run));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Status(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "child run {id} is still {}: ask again with request_id '{request_id}' for its result",
                    run.status.as_str()
                ),
            ));
        }
        // The poll is a safety net for a runner in another process.
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The output of a completed child, or upstream's 500 for any other end.
fn child_output(child: &RunState, op: &str) -> ApiResult<Map<String, Value>> {
    match (&child.status, &child.output) {
        (RunStatus::Completed, Some(Value::Object(o))) => Ok(o.clone()),
        _ => Err(ApiError::Status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{op} child run did not complete successfully: {} ({})",
                child.error.as_deref().unwrap_or("no output"),
                child.status.as_str()
            ),
        )),
    }
}
